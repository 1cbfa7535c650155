"""Monitoring: rates from recorded counter sequences (resets, gaps, clock steps), roll-ups and
retention, series queries and their errors, the Prometheus output parsed by prometheus-client's
own parser, the advisor's verdicts, and top's screen."""

from __future__ import annotations

import io
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from flexvm.cli.monitor import proposal_command, render, sparkline
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import InvalidInput, NotFound
from flexvm.model.metrics import GuestCounters, HostCounters
from flexvm.monitor import rates
from flexvm.monitor.advisor import AdviceKind, HostProposal, ResizeProposal
from flexvm.monitor.prometheus import exposition
from flexvm.monitor.query import MetricsQuery, parse_duration
from flexvm.platform import Platform
from flexvm.store.metrics import MetricsRepo, Sample
from tests.conftest import wait_operation
from tests.unit import test_cli
from tests.unit.test_cli import Cli

# test_cli's fixtures: the CLI's environment pointed at the in-process server.
cli_env = test_cli.cli_env
flexvm = test_cli.flexvm

S = 1_000_000_000  # ns


def reading(
    at: float, cpu_s: float, *, boot: str = "1", vcpus: int = 2, disk: int = 0, running: bool = True, **more: int
) -> GuestCounters:
    return GuestCounters(
        name="web1",
        vm_id="id",
        at=at,
        running=running,
        vcpus=vcpus,
        cpu_time_ns=int(cpu_s * S),
        vcpu_time_ns=int(cpu_s * S),
        vcpu_wait_ns=0,
        disk_read_bytes=disk,
        disk_write_bytes=disk,
        boot_id=boot,
        **more,
    )


# --- rates -------------------------------------------------------------------------------------


def test_cpu_percent_is_of_all_the_vcpus() -> None:
    # 2 vCPUs, 10 s, 10 s of CPU: one vCPU's worth, 50%.
    assert rates.guest_rates(reading(100, 5), reading(110, 15))["cpu_percent"] == pytest.approx(50.0)
    assert rates.guest_rates(reading(100, 5), reading(110, 25))["cpu_percent"] == pytest.approx(100.0)


def test_a_recorded_sequence_with_a_restart_never_gives_a_negative_or_absurd_rate() -> None:
    sequence = [
        reading(0, 0, disk=0),
        reading(15, 15, disk=1500),
        reading(30, 30, disk=3000),
        reading(45, 1, disk=10, boot="2"),  # restarted: counters began again
        reading(60, 8.5, disk=160, boot="2"),
    ]
    derived = [rates.guest_rates(a, b) for a, b in zip(sequence, sequence[1:], strict=False)]
    assert derived[0]["cpu_percent"] == pytest.approx(50.0)
    assert derived[0]["disk_read_bytes_per_s"] == pytest.approx(100.0)
    assert derived[2] == {}, "across a reset: no rate at all"
    assert derived[3]["cpu_percent"] == pytest.approx(25.0)
    assert all(v >= 0 for d in derived for v in d.values())


def test_a_counter_that_goes_down_without_a_new_boot_gives_no_rate_for_it() -> None:
    assert "disk_read_bytes_per_s" not in rates.guest_rates(reading(0, 0, disk=500), reading(10, 1, disk=100))


@pytest.mark.parametrize("later", [100.0, 99.0, 100.0 + 3600.0])
def test_a_clock_step_or_a_gap_gives_no_rate(later: float) -> None:
    assert rates.guest_rates(reading(100, 1), reading(later, 2)) == {}


def test_cpu_percent_is_clamped_and_a_stopped_guest_has_no_rate() -> None:
    assert rates.guest_rates(reading(0, 0), reading(1, 10))["cpu_percent"] == 100.0
    assert rates.guest_rates(reading(0, 0), reading(10, 1, running=False)) == {}


def test_memory_gauges_come_from_the_balloon_when_the_guest_reports() -> None:
    guest = reading(0, 0, memory_available_kib=1024 * 1024, memory_usable_kib=768 * 1024)
    gauges = rates.guest_gauges(guest)
    assert gauges == {"memory_used_mib": 256.0, "memory_available_mib": 768.0, "memory_used_percent": 25.0}
    assert rates.guest_gauges(reading(0, 0)) == {}, "no balloon statistics: no made-up memory figure"


def test_host_rates_and_gauges() -> None:
    before = HostCounters(at=0, cpus=4, cpu_busy_ns=0, cpu_total_ns=0)
    after = HostCounters(
        at=10,
        cpus=4,
        cpu_busy_ns=10 * S,
        cpu_total_ns=40 * S,
        memory_total_kib=8 * 1024 * 1024,
        memory_free_kib=6 * 1024 * 1024,
    )
    assert rates.host_rates(before, after) == {"cpu_percent": pytest.approx(25.0)}
    assert rates.host_gauges(after)["memory_used_mib"] == 2048.0


# --- storage, roll-ups, queries ----------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def series_samples(subject: str, start: float, count: int, step: float, value: float) -> list[Sample]:
    return [Sample(start + i * step, "vm", subject, "cpu_percent", value + (i % 3)) for i in range(count)]


def test_roll_ups_keep_average_min_and_max_and_retention_drops_old_rows(platform: Platform, image: str) -> None:
    wait_operation(platform, platform.vms.create("web1", "Standard_B1s", image).id)
    base = 1_800_000_000.0 - 1_800_000_000.0 % 60
    with platform.db.session() as session:
        repo = MetricsRepo(session)
        repo.add(series_samples("web1", base, 8, 15.0, 10.0))  # two minutes: 10,11,12,10 | 11,12,10,11
        assert repo.roll_up(base, base + 120) == 2
    clock = Clock(base + 110)
    query = MetricsQuery(platform.db, raw_retention=3600, clock=clock)
    raw = query.series("vm", "web1", "cpu_percent", window="2m", grain="1m")
    assert raw.source == "raw" and [round(v, 2) for _, v in raw.points] == [10.75, 11.0]
    longer = MetricsQuery(platform.db, raw_retention=60, clock=clock)
    rolled = longer.series("vm", "web1", "cpu_percent", window="2m", grain="1m", statistic="max")
    assert rolled.source == "rollup" and [v for _, v in rolled.points] == [12.0, 12.0]
    with platform.db.session() as session:
        MetricsRepo(session).forget(raw_before=base + 60, rollups_before=base + 60)
    with platform.db.session() as session:
        assert MetricsRepo(session).oldest_raw() == base + 60
    assert len(longer.series("vm", "web1", "cpu_percent", window="2m", grain="1m").points) == 1


def test_ten_thousand_samples_of_a_vm_are_queried_by_bucket(platform: Platform, image: str) -> None:
    wait_operation(platform, platform.vms.create("web1", "Standard_B1s", image).id)
    now = 1_800_000_000.0
    with platform.db.session() as session:
        MetricsRepo(session).add(series_samples("web1", now - 10_000, 10_000, 1.0, 50.0))
    query = MetricsQuery(platform.db, raw_retention=6 * 3600, clock=Clock(now))
    series = query.series("vm", "web1", "cpu_percent", window="3h")
    assert len(series.points) <= 120 and series.summary() == pytest.approx(51.0, abs=0.1)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("metric", {"metric": "cpu"}),
        ("statistic", {"statistic": "median"}),
        ("window", {"window": "an hour"}),
        ("window", {"window": "90d"}),
        ("grain", {"grain": "2h"}),
        ("grain", {"grain": "1s", "window": "7d"}),
    ],
)
def test_bad_names_and_windows_are_refused_listing_the_valid_ones(
    platform: Platform, field: str, kwargs: dict[str, str]
) -> None:
    query = MetricsQuery(platform.db, raw_retention=3600)
    args = {"metric": "cpu_percent", "window": "1h", **kwargs}
    with pytest.raises(InvalidInput) as caught:
        query.series("vm", "local", args.pop("metric"), **args)
    assert caught.value.field == field
    if field == "metric":
        assert "cpu_percent" in caught.value.message and "net_rx_bytes_per_s" in caught.value.message


def test_an_unknown_vm_has_no_series(platform: Platform) -> None:
    with pytest.raises(NotFound):
        MetricsQuery(platform.db, raw_retention=3600).series("vm", "nobody", "cpu_percent")


def test_parse_duration() -> None:
    assert [parse_duration(t, "w") for t in ("30s", "5m", "1h", "7d", "1.5m")] == [30, 300, 3600, 604800, 90]


# --- the collector end to end on the fake driver -------------------------------------------


def test_collector_prometheus_and_advisor(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    for name, size in (("busy", "Standard_B1s"), ("idle", "Standard_B1ms")):
        assert wait_operation(platform, platform.vms.create(name, size, image).id).status.value == "succeeded"
    fake_host.host.guests["busy"].cpu_load = 0.97
    fake_host.host.guests["idle"].cpu_load = 0.01
    for _ in range(5):  # readings a (simulated) second apart: the fake's counters follow monotonic time
        platform.collector.collect()
        wait_until_later()
    latest = {item.subject: item for item in platform.collector.latest()}
    assert latest["busy"].values["cpu_percent"] == pytest.approx(97, abs=3)
    assert latest["idle"].values["cpu_percent"] < 5
    assert latest["local"].kind == "host" and latest["local"].values["vm_count"] == 2

    families = {f.name: f for f in text_string_to_metric_families(exposition(platform.collector).decode())}
    samples = {s.labels["vm"]: s for s in families["flexvm_vm_cpu_percent"].samples}
    assert samples["busy"].labels == {"vm": "busy", "host": "local", "size": "Standard_B1s", "scale_set": ""}
    assert samples["busy"].value == pytest.approx(97, abs=3)
    assert families["flexvm_host_vm_count"].samples[0].value == 2

    report = platform.advisor.advise("1m")
    verdicts = {(a.kind, a.subject): a for a in report.advice}
    assert verdicts[("starved", "busy")].resize == ResizeProposal("busy", "Standard_B1s", "Standard_B2s")
    assert verdicts[("oversized", "idle")].resize == ResizeProposal("idle", "Standard_B1ms", "Standard_B1ls")
    assert verdicts[("oversized", "idle")].evidence["cpu_avg_percent"] < 5
    assert all("flexvm " not in a.message and "--" not in a.message for a in report.advice), "no command lines"


def measured(platform: Platform, vm: str, metric: str, value: float, count: int = 5) -> None:
    """``count`` samples of ``value`` over the last minute, ten seconds apart."""
    now = time.time()
    with platform.db.session() as session:
        MetricsRepo(session).add([Sample(now - 50 + 10 * i, "vm", vm, metric, value) for i in range(count)])


@pytest.fixture
def advised(platform: Platform, image: str) -> Platform:
    """VM 'busy' (Standard_B1s) on host 'local' runs at 97% CPU, its vCPUs waiting 25% of the time."""
    assert wait_operation(platform, platform.vms.create("busy", "Standard_B1s", image).id).status.value == "succeeded"
    measured(platform, "busy", "cpu_percent", 97.0)
    measured(platform, "busy", "cpu_wait_percent", 25.0)
    return platform


def test_a_host_whose_guests_wait_gets_a_proposal_to_ease_it(advised: Platform) -> None:
    report = advised.advisor.advise("1m")
    contention = [a for a in report.advice if a.kind is AdviceKind.CONTENTION]
    assert [a.subject for a in contention] == ["local"]
    ratio = advised.hosts.get("local").cpu_ratio
    assert contention[0].host_change == HostProposal("local", ratio) and contention[0].resize is None
    assert contention[0].evidence == {"vcpu_wait_max_percent": 25.0, "vms": 1.0}
    assert f"lower its CPU ratio ({ratio:g})" in contention[0].message


def test_the_api_returns_the_proposals_as_structure(advised: Platform, api: TestClient) -> None:
    advice = {a["kind"]: a for a in api.get("/v1/advisor", params={"window": "1m"}).json()["advice"]}
    assert advice["starved"]["resize"] == {
        "vm": "busy",
        "current_size": "Standard_B1s",
        "proposed_size": "Standard_B2s",
    }
    assert advice["starved"]["host_change"] is None and "command" not in advice["starved"]
    assert advice["contention"]["host_change"] == {"host": "local", "cpu_ratio": advised.hosts.get("local").cpu_ratio}
    assert advice["starved"]["evidence"]["cpu_avg_percent"] == 97.0


def test_the_cli_renders_each_proposal_as_a_command_line(advised: Platform, flexvm: Cli) -> None:
    out = flexvm.ok("advisor", "--window", "1m")
    assert "run: flexvm vm resize busy --size Standard_B2s" in out
    ratio = advised.hosts.get("local").cpu_ratio
    assert f"run: flexvm host rebalance --dry-run   # or: flexvm host update local --cpu-ratio <below {ratio:g}>" in out


def test_advice_without_a_proposal_has_no_command() -> None:
    assert proposal_command({"resize": None, "host_change": None}) is None


def wait_until_later() -> None:
    time.sleep(0.3)  # the fake's counters advance with real time: let some pass between readings


def test_a_host_that_does_not_answer_leaves_a_gap_not_zeros(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    wait_operation(platform, platform.vms.create("web1", "Standard_B1s", image).id)
    platform.collector.collect()
    fake_host.host.reachable = False
    try:
        assert platform.collector.collect() == 0
    finally:
        fake_host.host.reachable = True


def test_top_renders_hosts_then_their_vms_sorted() -> None:
    latest = [
        {
            "kind": "host",
            "subject": "h1",
            "at": 0,
            "values": {"cpu_percent": 50, "vm_count": 2, "vcpus_allocated": 3},
            "labels": {"host": "h1"},
        },
        {
            "kind": "vm",
            "subject": "a",
            "at": 0,
            "values": {"cpu_percent": 10, "memory_used_mib": 900},
            "labels": {"host": "h1", "size": "B1s"},
        },
        {
            "kind": "vm",
            "subject": "b",
            "at": 0,
            "values": {"cpu_percent": 90, "memory_used_mib": 100},
            "labels": {"host": "h1", "size": "B2s"},
        },
    ]
    for sort, first in (("cpu", "b"), ("memory", "a"), ("name", "a")):
        console = Console(file=io.StringIO(), width=160)
        console.print(render(latest, sort))
        screen = console.file.getvalue()  # type: ignore[attr-defined]
        assert screen.index("host h1") < screen.index(f"  {first} ")
        other = "a" if first == "b" else "b"
        assert screen.index(f"  {first} ") < screen.index(f"  {other} "), f"sorted by {sort}"


def test_sparkline() -> None:
    assert sparkline([0, 50, 100], 100) == "▁▅█"
    assert sparkline([]) == ""


def test_the_collector_refuses_an_interval_below_a_second(platform: Platform) -> None:
    from flexvm.monitor.collector import Collector

    with pytest.raises(ValueError):
        Collector(platform.db, platform.hosts, 0.5, 1.0)
