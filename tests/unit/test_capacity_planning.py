"""Capacity planning: the report per host and in total, what-if batches, and losing a host.

The pool of every platform test here, by hand (no 'local' host):
  a: 4 CPUs x 2.0 = 8 vCPUs; (8192 - 1024 reserved) x 1.5 = 10752 MiB; 100G x 2.0 = 200G
     holds one Standard_B2s (2, 4096, 8G)  -> free 6 vCPUs, 6656 MiB, 192G
  b: advertises 2 CPUs x 4.0 = 8 vCPUs; (4096 advertised - 512) x 1.0 = 3584 MiB; 50G
     holds two Standard_B1s (1, 1024, 4G)  -> free 6 vCPUs, 1536 MiB, 42G
  c: down, empty: 8 vCPUs, 3584 MiB, 100G; nothing fits on a host that is down.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.capacity.planning import Evacuee, busiest, plan_batch, plan_failure
from flexvm.capacity.service import parse_what_if
from flexvm.config import Settings
from flexvm.drivers import connect
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import InvalidInput
from flexvm.model.host import HostState
from flexvm.model.units import GIB
from flexvm.platform import Platform
from flexvm.scheduler.placement import Request
from tests.conftest import BACKENDS, fresh_database
from tests.unit.pool_helpers import NOTHING, add_host, make_host, pool_settings, room_of, run, snap


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


def build_pool(platform: Platform, image: str) -> dict[str, FakeDriver]:
    """The pool described in the module docstring."""
    fakes = {
        "a": add_host(platform, "a", cpus=4, memory_mib=8192, disk_gib=100, cpu_ratio=2.0, ram_ratio=1.5,
                      reserved_memory_mib=1024, disk_ratio=2.0),
        "b": add_host(platform, "b", cpus=8, memory_mib=16384, disk_gib=50, advertised_cpus=2,
                      advertised_memory_mib=4096),
        "c": add_host(platform, "c", cpus=2, memory_mib=4096, disk_gib=100),
    }  # fmt: skip
    run(platform, platform.vms.create("big", "Standard_B2s", image, host="a"))
    run(platform, platform.vms.create("small1", "Standard_B1s", image, host="b"))
    run(platform, platform.vms.create("small2", "Standard_B1s", image, host="b"))
    fakes["c"].host.reachable = False
    assert platform.hosts.refresh("c", timeout=1.0).state is HostState.DOWN
    return fakes


@pytest.fixture
def pool(platform: Platform, image: str) -> dict[str, FakeDriver]:
    """The pool on the test's own platform, for tests that change it."""
    return build_pool(platform, image)


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One platform with the pool for the tests that only read it (building it takes a while)."""
    tmp = tmp_path_factory.mktemp("capacity")
    with fresh_database(request, tmp / "home") as url:
        yield from _shared_platform(tmp, url)


def _shared_platform(tmp: Path, db_url: str) -> Iterator[Platform]:
    platform = Platform.open(pool_settings(tmp, db_url), connect)
    try:
        platform.start()
        disk = tmp / "small.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
        run(platform, platform.images.import_image("img", disk, ready_marker="flexvm: ready"))
        build_pool(platform, "img")
        yield platform
    finally:
        platform.close()


def allocations(platform: Platform) -> dict[str, tuple[int, int, int]]:
    return {
        h.name: (d.allocated.vcpus, d.allocated.memory_mib, d.allocated.disk_bytes)
        for h in platform.hosts.list()
        for d in [platform.hosts.detail(h.name)]
    }


# --- the report ---------------------------------------------------------------------------------


def test_the_report_per_host_matches_the_arithmetic(shared: Platform) -> None:
    report = shared.capacity.report()
    rooms = {h.host.name: h.snapshot.room for h in report.hosts}
    assert [h.host.name for h in report.hosts] == ["a", "b", "c"]
    a, b, c = rooms["a"], rooms["b"], rooms["c"]
    assert (a.vcpus_total, a.memory_mib_total, a.disk_bytes_total) == (8, 10752, 200 * GIB)
    assert (a.vcpus_free, a.memory_mib_free, a.disk_bytes_free) == (6, 6656, 192 * GIB)
    assert (b.vcpus_total, b.memory_mib_total, b.disk_bytes_total) == (8, 3584, 50 * GIB)
    assert (b.vcpus_free, b.memory_mib_free, b.disk_bytes_free) == (6, 1536, 42 * GIB)
    assert (c.vcpus_total, c.memory_mib_total, c.disk_bytes_total) == (8, 3584, 100 * GIB)
    assert room_of(shared, "a") == a  # the report and the host's detail agree


def test_the_report_counts_what_fits_per_host_and_in_total(shared: Platform) -> None:
    report = shared.capacity.report()
    fits = {h.host.name: h.fits for h in report.hosts}
    # Standard_B1s (1, 1024, 4G): a min(6, 6, 48) = 6; b min(6, 1, 10) = 1; c is down.
    assert (fits["a"]["Standard_B1s"], fits["b"]["Standard_B1s"], fits["c"]["Standard_B1s"]) == (6, 1, 0)
    # Standard_B2s (2, 4096, 8G): a min(3, 1, 24) = 1; b none.
    assert (fits["a"]["Standard_B2s"], fits["b"]["Standard_B2s"]) == (1, 0)
    # Standard_B1ls (1, 512, 4G): a min(6, 13, 48) = 6; b min(6, 3, 10) = 3.
    assert (fits["a"]["Standard_B1ls"], fits["b"]["Standard_B1ls"]) == (6, 3)
    assert all(n == 0 for n in fits["c"].values())
    totals = report.totals_fit
    assert (totals["Standard_B1s"], totals["Standard_B2s"], totals["Standard_B1ls"]) == (7, 1, 9)
    for size, total in report.totals_fit.items():
        assert total == sum(f[size] for f in fits.values())
    assert {s.size.name: s.fits_now for s in shared.sizes.list_with_fit()} == report.totals_fit


def test_the_report_follows_an_update(platform: Platform, pool: dict[str, FakeDriver]) -> None:
    from flexvm.compute.hosts import HostChanges

    platform.hosts.update("b", HostChanges(advertised_memory_mib=8192))  # (8192 - 512) - 2048 = 5632 free
    b = next(h for h in platform.capacity.report().hosts if h.host.name == "b")
    assert (b.snapshot.room.memory_mib_total, b.snapshot.room.memory_mib_free) == (7680, 5632)
    assert b.fits["Standard_B1s"] == 5


# --- what-if: parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("B2s", "is not SIZE=COUNT"),
        ("Standard_B2s", "is not SIZE=COUNT"),
        ("Standard_B2s=0", "between 1 and 100000"),
        ("Standard_B2s=100001", "between 1 and 100000"),
        ("Standard_B2s=-1", "is not SIZE=COUNT"),
        ("Standard_B2s=two", "is not SIZE=COUNT"),
        ("=3", "is not SIZE=COUNT"),
        ("", "say what to place"),
        (" , ,", "say what to place"),
    ],
)
def test_a_bad_what_if_is_refused_naming_what_if(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_what_if(text)
    assert caught.value.field == "what_if"
    assert words in caught.value.message


def test_a_what_if_reads_sizes_and_counts_in_order() -> None:
    assert parse_what_if(" Standard_B2s=20 , Standard_D2s_v5=3,") == [("Standard_B2s", 20), ("Standard_D2s_v5", 3)]


def test_a_what_if_for_an_unknown_size_names_the_size(shared: Platform) -> None:
    with pytest.raises(InvalidInput) as caught:
        shared.capacity.what_if("x=1")
    assert caught.value.field == "size"
    assert "unknown size 'x'" in caught.value.message


def test_a_what_if_with_an_unknown_policy_names_policy(shared: Platform) -> None:
    with pytest.raises(InvalidInput) as caught:
        shared.capacity.what_if("Standard_B1s=1", policy="random")
    assert caught.value.field == "policy"


# --- what-if: plans ------------------------------------------------------------------------------


def test_a_batch_that_fits_is_placed_and_nothing_is_claimed(shared: Platform) -> None:
    before = allocations(shared)
    (result,) = shared.capacity.what_if("Standard_B1s=7")
    assert result.size.name == "Standard_B1s"
    assert result.plan.fits and result.plan.first_failure is None
    assert result.plan.requested == 7
    assert dict(result.plan.placed) == {"a": 6, "b": 1}
    assert sum(result.plan.placed.values()) == 7
    assert allocations(shared) == before
    assert shared.capacity.report().totals_fit["Standard_B1s"] == 7


def test_a_batch_that_does_not_fit_says_why_the_first_misfit_failed(shared: Platform) -> None:
    (result,) = shared.capacity.what_if("Standard_B1s=10")
    assert not result.plan.fits
    assert sum(result.plan.placed.values()) == 7  # what fits, then the first that did not
    why = result.plan.first_failure
    assert why is not None
    assert "no host can hold 1 vCPUs, 1G memory, 4G disk" in why
    assert "a: needs 1 vCPUs, 0 free" in why  # its 6 free vCPUs took 6
    assert "b: needs 1G memory, 512M free" in why
    assert "c: host is down" in why


def test_sizes_in_a_batch_are_placed_in_order_on_what_the_previous_left(shared: Platform) -> None:
    big, small = shared.capacity.what_if("Standard_B2s=1,Standard_B1s=7")
    assert big.plan.fits and dict(big.plan.placed) == {"a": 1}
    # a has 6656 - 4096 = 2560 MiB left: 2 more B1s; b still 1.
    assert not small.plan.fits
    assert dict(small.plan.placed) == {"a": 2, "b": 1}


def test_best_fit_and_spread_plan_differently(shared: Platform) -> None:
    (packed,) = shared.capacity.what_if("Standard_B1ls=2")
    (spread,) = shared.capacity.what_if("Standard_B1ls=2", policy="spread")
    assert dict(packed.plan.placed) == {"b": 2}  # the fuller host first
    assert dict(spread.plan.placed) == {"a": 2}  # the emptier host first


def test_plan_batch_on_snapshots_alone() -> None:
    pool = [snap(make_host("x")), snap(make_host("y"), Allocation(0, 7680 - 1024, 0))]
    plan = plan_batch(pool, Request(1, 1024, GIB), 9)
    assert dict(plan.placed) == {"y": 1, "x": 7}
    assert not plan.fits and plan.first_failure is not None
    assert plan_batch(pool, Request(1, 1024, GIB), 8).fits


# --- losing a host -------------------------------------------------------------------------------


def test_failure_loses_the_busiest_host_and_lists_the_homeless_with_reasons(shared: Platform) -> None:
    plan, snapshots = shared.capacity.failure()
    assert plan.lost_host == "a"  # 4096 MiB allocated against b's 2048
    assert plan.moved == {}
    assert set(plan.homeless) == {"big"}
    why = plan.homeless["big"]
    assert "b: larger than this host can ever hold: needs 4G memory, the host has 3.5G in all" in why
    assert "c: host is down" in why
    assert not plan.survives
    assert [s.host.name for s in snapshots] == ["a", "b", "c"]


def test_failure_of_a_named_host_moves_its_vms_where_they_fit(shared: Platform) -> None:
    plan, _ = shared.capacity.failure("b")
    assert plan.lost_host == "b"
    assert plan.moved == {"small1": "a", "small2": "a"}
    assert plan.homeless == {} and plan.survives
    assert allocations(shared)["a"] == (2, 4096, 8 * GIB)  # on paper only


def test_failure_of_an_unknown_host_names_host(shared: Platform) -> None:
    with pytest.raises(InvalidInput) as caught:
        shared.capacity.failure("nope")
    assert caught.value.field == "host"


def test_failure_with_no_host_up_has_nothing_to_lose(platform: Platform) -> None:
    plan, snapshots = platform.capacity.failure()
    assert (plan.lost_host, plan.moved, plan.homeless, snapshots) == (None, {}, {}, [])
    assert plan.survives


def test_failure_ignores_deallocated_vms(platform: Platform, pool: dict[str, FakeDriver]) -> None:
    run(platform, platform.vms.deallocate("big"))
    plan, _ = platform.capacity.failure("a")
    assert plan.moved == {} and plan.homeless == {}


def test_busiest_is_the_up_host_with_most_memory_allocated() -> None:
    pool = [
        snap(make_host("down", state=HostState.DOWN), Allocation(8, 7000, GIB)),
        snap(make_host("less"), Allocation(8, 1000, GIB)),
        snap(make_host("more"), Allocation(1, 2000, GIB)),
    ]
    chosen = busiest(pool)
    assert chosen is not None and chosen.host.name == "more"
    assert busiest([pool[0]]) is None
    assert busiest([snap(make_host("p"), NOTHING), snap(make_host("q"), NOTHING)]) is not None


def test_plan_failure_places_the_largest_first() -> None:
    """Room for one 4G VM or two 2G ones elsewhere: the 4G one, hardest to fit, goes first."""
    lost = snap(make_host("lost"), Allocation(3, 7168, 3 * GIB))
    other = snap(make_host("other", memory_mib=4608))  # 4096 MiB of room
    evacuees = [
        Evacuee("small1", Request(1, 2048, GIB)),
        Evacuee("big", Request(1, 4096, GIB)),
        Evacuee("small2", Request(1, 1024, GIB)),
    ]
    plan = plan_failure([lost, other], "lost", evacuees)
    assert plan.moved == {"big": "other"}
    assert set(plan.homeless) == {"small1", "small2"}
    assert all("other: needs" in why for why in plan.homeless.values())
