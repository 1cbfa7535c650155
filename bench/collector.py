"""The collector's own cost, and how fast history is queried, each against a bare baseline.

1. CPU time per collector round (read every guest's counters, derive rates, store the samples)
   for 1 and 10 real tiny guests on this machine's libvirt, and 100 guests on the fake driver,
   next to the bare libvirt bulk-stats call (getAllDomainStats) for the same guests.
2. A one-hour and a seven-day query of one VM's CPU % with a week of roll-ups (and six hours of
   raw samples) stored for 10 VMs, next to a plain SELECT of the same rows.

    .venv/bin/python bench/collector.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import libvirt  # noqa: E402
from sqlalchemy import select  # noqa: E402

from flexvm.compute.hosts import HostChanges  # noqa: E402
from flexvm.config import Settings  # noqa: E402
from flexvm.drivers import connect  # noqa: E402
from flexvm.model.metrics import VM_METRICS  # noqa: E402
from flexvm.monitor.query import MetricsQuery  # noqa: E402
from flexvm.platform import Platform  # noqa: E402
from flexvm.store.metrics import MetricsRepo, Sample  # noqa: E402
from flexvm.store.tables import MetricRollupRow, MetricSampleRow  # noqa: E402

ROUNDS = 10


def cpu_per_call(fn, rounds: int = ROUNDS, pause: float = 0.0) -> float:  # noqa: ANN001
    """Median process CPU seconds of one call."""
    costs = []
    for _ in range(rounds):
        started = time.process_time()
        fn()
        costs.append(time.process_time() - started)
        if pause:
            time.sleep(pause)
    return statistics.median(costs)


def platform_for(home: Path, uri: str) -> Platform:
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'flexvm.db'}", local_uri=uri, ready_timeout=120)
    platform = Platform.open(settings, connect)
    platform.collect_metrics = False
    platform.start()
    return platform


def real_guests(count: int, tmp: Path) -> tuple[float, float]:
    """(collector round, bare getAllDomainStats) CPU seconds with ``count`` tiny guests on qemu:///system."""
    platform = platform_for(tmp / f"real{count}", "qemu:///system")
    tag = f"bench-{uuid.uuid4().hex[:4]}"
    image = f"{tag}-tiny"
    platform.runner.wait(platform.images.build_tiny(image).id, 300)
    names = [f"{tag}-{i}" for i in range(count)]
    # Ten 1-vCPU guests on two cores: let this benchmark's host overcommit CPU that far.
    platform.hosts.update("local", HostChanges(cpu_ratio=8.0))
    created: list[str] = []
    try:
        for name in names:
            created.append(name)
            platform.runner.wait(platform.vms.create(name, "Standard_B1ls", image).id, 300)
        assert all(platform.vms.get(n).power_state.value == "running" for n in names)
        platform.collector.collect()
        ours = cpu_per_call(platform.collector.collect, pause=1.0)
        conn = libvirt.open("qemu:///system")
        wanted = {n for n in names}
        bare = cpu_per_call(lambda: [d for d, _ in conn.getAllDomainStats(0, 0) if d.name() in wanted], pause=1.0)
        conn.close()
        return ours, bare
    finally:
        for name in created:
            try:
                platform.runner.wait(platform.vms.delete(name).id, 120)
            except Exception as err:  # keep cleaning the rest
                print(f"could not delete {name}: {err}")
        platform.images.delete(image, [platform.drivers.for_uri("qemu:///system")])
        platform.close()


def fake_guests(count: int, tmp: Path) -> float:
    platform = platform_for(tmp / "fake", f"fake://bench-{uuid.uuid4().hex[:6]}?cpus=64&memory_mib=262144")
    disk = tmp / "disk.qcow2"
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    platform.runner.wait(platform.images.import_image("img", disk, ready_marker="flexvm: ready").id, 30)
    ops = [platform.vms.create(f"f{i}", "Standard_B1ls", "img") for i in range(count)]
    for op in ops:
        platform.runner.wait(op.id, 60)
    platform.collector.collect()
    cost = cpu_per_call(platform.collector.collect, pause=0.2)
    platform.close()
    return cost


def query_latency(tmp: Path) -> dict[str, float]:
    platform = platform_for(tmp / "history", "")
    now = time.time()
    now -= now % 60
    vms = [f"vm{i}" for i in range(10)]
    with platform.db.session() as session:
        repo = MetricsRepo(session)
        rollups = []
        for vm in vms:
            for metric in VM_METRICS:
                for minute in range(7 * 24 * 60):
                    rollups.append(
                        {
                            "kind": "vm",
                            "subject": vm,
                            "metric": metric,
                            "minute": now - minute * 60,
                            "avg": 40.0,
                            "min": 10.0,
                            "max": 90.0,
                            "count": 4,
                        }
                    )
        session.execute(MetricRollupRow.__table__.insert(), rollups)
        repo.add(
            Sample(now - i * 15, "vm", vm, metric, 40.0) for vm in vms for metric in VM_METRICS for i in range(6 * 240)
        )
    query = MetricsQuery(platform.db, raw_retention=6 * 3600)
    timings: dict[str, float] = {}

    def timed(label: str, fn) -> None:  # noqa: ANN001
        samples = []
        for _ in range(20):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        timings[label] = statistics.median(samples)

    timed("1h query (raw, 60 points)", lambda: query.series("vm", "vm3", "cpu_percent", window="1h", grain="1m"))
    timed("7d query (roll-ups, 168 points)", lambda: query.series("vm", "vm3", "cpu_percent", window="7d"))

    def plain_select(table, column, since) -> None:  # noqa: ANN001
        with platform.db.session() as session:
            list(
                session.execute(
                    select(table).where(
                        table.c.kind == "vm", table.c.subject == "vm3", table.c.metric == "cpu_percent", column >= since
                    )
                )
            )

    samples_table, rollups_table = MetricSampleRow.__table__, MetricRollupRow.__table__
    timed("plain SELECT of the 1h rows", lambda: plain_select(samples_table, samples_table.c.ts, now - 3600))
    timed("plain SELECT of the 7d rows", lambda: plain_select(rollups_table, rollups_table.c.minute, now - 7 * 86400))
    platform.close()
    return timings


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows = []
        for count in (1, 10):
            ours, bare = real_guests(count, tmp)
            rows.append((f"{count} real guest{'s' if count > 1 else ''}", ours, bare))
        fake = fake_guests(100, tmp)
        timings = query_latency(tmp)
    print("\nCollector CPU time per round (median of 10), against the bare bulk-stats call\n")
    print(f"{'':18} {'collector round':>16} {'getAllDomainStats':>18} {'ratio':>7}")
    for label, ours, bare in rows:
        print(f"{label:18} {ours * 1000:13.1f} ms {bare * 1000:15.1f} ms {ours / max(bare, 1e-6):6.1f}x")
    print(f"{'100 fake guests':18} {fake * 1000:13.1f} ms {'-':>18}")
    print("\nQuery latency with a week of roll-ups and 6 h of raw samples for 10 VMs (median of 20)\n")
    for label, seconds in timings.items():
        print(f"  {label:36} {seconds * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
