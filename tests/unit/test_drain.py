"""Draining, undraining and rebalancing fake hosts.

Pins: a drain plan moves running VMs first and the largest first, says why each other VM stays (no
room, deallocated, busy), respects availability-set spread and the VM's network, and changes
nothing; a drain puts the host in maintenance and moves everything that can move (stopped ones
stay stopped); a move failing inside a drain fails the operation listing it while the others move;
undrain refuses while moves run and on a host not in maintenance; a rebalance plan narrows the
memory-use gap within max_moves and the threshold, bad values are refused naming the field, and
the rebalance itself moves the VMs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.config import Settings
from flexvm.errors import CapacityError, Conflict, FlexvmError, InvalidInput, InvalidState, NotFound
from flexvm.model.guest import GuestState
from flexvm.model.host import HostState
from flexvm.model.units import GIB
from flexvm.platform import Platform
from tests.unit.flex_helpers import Gate, claims, failed, finish, guest, make_vm, quick_image
from tests.unit.pool_helpers import add_host, pool_settings, run
from tests.unit.waiting import wait_done


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    return quick_image(platform, small_disk)


def crowd(platform: Platform) -> None:
    """On host a: 'gone' deallocated, 'small' (1 GiB) and 'big' (2 GiB) running, 'stopped' (4 GiB)."""
    make_vm(platform, "gone")
    run(platform, platform.vms.deallocate("gone"))
    make_vm(platform, "small")
    make_vm(platform, "big", "Standard_B1ms")
    make_vm(platform, "stopped", "Standard_B2s")
    run(platform, platform.vms.stop("stopped"))


def where(platform: Platform) -> dict[str, tuple[str | None, str]]:
    return {vm.name: (vm.host or vm.disk_host, vm.power_state.value) for vm in platform.vms.list()}


def nothing_held(platform: Platform) -> bool:
    return all(vm.moving_to is None and vm.active_operation_id is None for vm in platform.vms.list())


# --- plans -------------------------------------------------------------------------------------


def test_the_drain_plan_moves_running_first_largest_first_and_changes_nothing(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    add_host(platform, "b")
    crowd(platform)
    before = where(platform)
    plan = platform.drains.plan_drain("a")
    assert [(m.vm, m.destination, m.mode) for m in plan.moves] == [
        ("big", "b", "live"),
        ("small", "b", "live"),
        ("stopped", "b", "cold"),
    ]
    assert list(plan.stays) == ["gone"] and plan.stays["gone"].startswith("deallocated")
    assert plan.parallel == 1
    assert plan.estimate_seconds == pytest.approx(sum(m.estimate_seconds for m in plan.moves))
    assert platform.drains.plan_drain("a", parallel=3).estimate_seconds == pytest.approx(
        max(m.estimate_seconds for m in plan.moves)
    )
    assert platform.hosts.get("a").state is HostState.UP
    assert where(platform) == before and nothing_held(platform)


def test_vms_no_other_host_can_take_stay_with_the_reason(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    add_host(platform, "b", memory_mib=2048)  # 1.5 GiB for guests
    crowd(platform)
    plan = platform.drains.plan_drain("a")
    assert [m.vm for m in plan.moves] == ["small"]
    assert set(plan.stays) == {"big", "stopped", "gone"}
    for name in ("big", "stopped"):
        assert plan.stays[name].startswith("no other host can take it") and "memory" in plan.stays[name]


def test_a_busy_vm_stays_naming_its_operation(platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a = add_host(platform, "a")
    add_host(platform, "b")
    make_vm(platform, "busy")
    make_vm(platform, "idle")
    gate = Gate(monkeypatch, a, "set_vcpus")
    operation = platform.resizer.resize("busy", "Standard_B2s")
    try:
        gate.wait_reached()
        plan = platform.drains.plan_drain("a")
    finally:
        finish(platform, gate, operation)
    assert [m.vm for m in plan.moves] == ["idle"]
    assert plan.stays == {"busy": f"busy with operation {operation.id}"}


def test_the_plan_keeps_an_availability_set_spread(platform: Platform, image: str) -> None:
    """b is best fit (smallest), but it already holds web1, the other member of a 2-domain set:
    web0 goes to c; 'solo', in no set, takes best fit's b."""
    add_host(platform, "a")
    add_host(platform, "b", memory_mib=4096)
    add_host(platform, "c")
    platform.availability_sets.create("web", 2)
    make_vm(platform, "web0", host="a", availability_set="web")
    make_vm(platform, "web1", host="b", availability_set="web")
    make_vm(platform, "solo", host="a")
    plan = platform.drains.plan_drain("a")
    assert {m.vm: m.destination for m in plan.moves} == {"web0": "c", "solo": "b"}
    run(platform, platform.drains.drain("a"))
    layout = platform.availability_sets.layout("web").domains
    assert layout == {"b": {"b": ["web1"]}, "c": {"c": ["web0"]}}


def test_a_drain_keeps_a_vm_on_its_network(platform: Platform, image: str, tmp_path: Path) -> None:
    """a and b are on network lan, c (best fit) is not: web1, on lan, must go to b, where its
    address still works, not to c."""
    dhcp = tmp_path / "dhcp"
    dhcp.mkdir()
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.10", "10.213.0.19", dhcp_hosts_dir=str(dhcp))
    add_host(platform, "a", network="lan", bridge="br-lan")
    add_host(platform, "b", network="lan", bridge="br-lan")
    add_host(platform, "c", memory_mib=4096)
    make_vm(platform, "web1", host="a")
    plan = platform.drains.plan_drain("a")
    assert [(m.vm, m.destination) for m in plan.moves] == [("web1", "b")]


def test_a_bad_parallel_is_refused_naming_it_and_the_host_stays_up(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    for parallel in (0, 9, -1):
        for attempt in (platform.drains.plan_drain, platform.drains.drain):
            with pytest.raises(InvalidInput) as caught:
                attempt("a", parallel)
            assert caught.value.field == "parallel"
    assert platform.hosts.get("a").state is HostState.UP
    with pytest.raises(NotFound):
        platform.drains.drain("nowhere")


# --- drain and undrain ---------------------------------------------------------------------------


def test_a_drain_puts_the_host_in_maintenance_and_moves_everything_that_can(platform: Platform, image: str) -> None:
    a = add_host(platform, "a")
    b = add_host(platform, "b")
    crowd(platform)
    operation = platform.drains.drain("a", parallel=2)
    host = platform.hosts.get("a")
    assert (host.state, host.state_reason) == (HostState.MAINTENANCE, "draining")
    done = run(platform, operation)
    assert (done.kind, done.target_name) == ("host.drain", "a")
    assert set(done.result["moved"]) == {"big", "small", "stopped"} and done.result["failed"] == {}
    assert list(done.result["stayed"]) == ["gone"]
    assert where(platform) == {
        "big": ("b", "running"),
        "small": ("b", "running"),
        "stopped": ("b", "stopped"),
        "gone": ("a", "deallocated"),
    }
    assert nothing_held(platform)
    assert claims(platform, "a") == Allocation(0, 0, 4 * GIB), "only the deallocated VM's disk"
    assert claims(platform, "b") == Allocation(4, 7168, 16 * GIB)
    assert set(a.host.guests) == set()
    assert {n: g.state for n, g in b.host.guests.items()} == {
        "big": GuestState.RUNNING,
        "small": GuestState.RUNNING,
        "stopped": GuestState.SHUTOFF,
    }
    with pytest.raises(CapacityError):  # in maintenance: it takes no new VM
        platform.vms.create("late", "Standard_B1s", "img", host="a")
    platform.drains.undrain("a")
    assert (platform.hosts.get("a").state, platform.hosts.get("a").state_reason) == (HostState.UP, "")
    with pytest.raises(InvalidState):
        platform.drains.undrain("a")


def test_a_move_failing_in_a_drain_fails_the_operation_listing_it_while_the_others_move(
    platform: Platform, image: str
) -> None:
    a = add_host(platform, "a")
    b = add_host(platform, "b")
    crowd(platform)
    a.fail_next("migrate")  # the first move: 'big', live
    done = failed(platform, platform.drains.drain("a"), "Conflict")
    assert "1 of 3 moves failed" in done.error["message"]  # type: ignore[index]
    assert list(done.result["failed"]) == ["big"] and set(done.result["moved"]) == {"small", "stopped"}
    assert done.error["details"]["failed"] == done.result["failed"]  # type: ignore[index]
    assert where(platform)["big"] == ("a", "running") and where(platform)["small"] == ("b", "running")
    big = guest(a, "big")
    assert big is not None and big.state is GuestState.RUNNING and guest(b, "big") is None
    assert nothing_held(platform)
    assert platform.hosts.get("a").state is HostState.MAINTENANCE
    run(platform, platform.drains.drain("a"))  # drained again, the rest goes
    assert where(platform)["big"] == ("b", "running")


def test_undrain_is_refused_while_vms_are_still_moving(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = add_host(platform, "a")
    add_host(platform, "b")
    make_vm(platform, "web1")
    gate = Gate(monkeypatch, a, "migrate")
    operation = platform.drains.drain("a")
    try:
        gate.wait_reached()
        with pytest.raises(Conflict) as caught:
            platform.drains.undrain("a")
    finally:
        finish(platform, gate, operation)
    assert "still draining" in caught.value.message and "web1" in caught.value.message
    assert platform.hosts.get("a").state is HostState.MAINTENANCE
    platform.drains.undrain("a")
    assert platform.hosts.get("a").state is HostState.UP


# --- rebalance -----------------------------------------------------------------------------------


def lopsided(platform: Platform) -> None:
    """a: two 2 GiB and two 1 GiB VMs (6 of 7.5 GiB: 0.8 used); b: empty."""
    add_host(platform, "a")
    add_host(platform, "b")
    for name, size in (
        ("m1", "Standard_B1ms"),
        ("m2", "Standard_B1ms"),
        ("s1", "Standard_B1s"),
        ("s2", "Standard_B1s"),
    ):
        make_vm(platform, name, size)


def memory_of(platform: Platform, name: str) -> int:
    return platform.vms.get(name).memory_mib


def test_the_rebalance_plan_narrows_the_gap_within_max_moves_and_threshold(platform: Platform, image: str) -> None:
    lopsided(platform)
    plan = platform.drains.plan_rebalance()
    assert plan.spread_before == pytest.approx(0.8)
    assert [(m.source, m.destination, m.mode) for m in plan.moves] == [("a", "b", "live")] * 2
    assert [memory_of(platform, m.vm) for m in plan.moves] == [2048, 1024], "the move that narrows most first"
    assert plan.spread_after == pytest.approx(0.0)
    one = platform.drains.plan_rebalance(max_moves=1)
    assert len(one.moves) == 1 and one.spread_after == pytest.approx(0.8 - 2 * 2048 / 7680)
    assert platform.drains.plan_rebalance(threshold=0.9).moves == []
    with pytest.raises(InvalidState):
        platform.drains.rebalance(threshold=0.9)
    assert nothing_held(platform) and claims(platform, "b") == Allocation()


def test_a_rebalance_moves_the_planned_vms(platform: Platform, image: str) -> None:
    lopsided(platform)
    done = run(platform, platform.drains.rebalance())
    assert (done.kind, done.target_kind) == ("pool.rebalance", "pool")
    assert len(done.result["moved"]) == 2
    assert claims(platform, "a").memory_mib == claims(platform, "b").memory_mib == 3072
    assert nothing_held(platform)


BAD_REBALANCE = [  # those the pool's state alone would refuse first, those that would move VMs last
    ({"threshold": 1.0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"max_moves": 0}, "max_moves"),
    ({"max_moves": 101}, "max_moves"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": -0.5}, "threshold"),
]


def test_bad_rebalance_values_are_refused_by_the_plan_naming_the_field(platform: Platform) -> None:
    for values, field in BAD_REBALANCE:
        with pytest.raises(InvalidInput) as caught:
            platform.drains.plan_rebalance(**values)  # type: ignore[arg-type]
        assert caught.value.field == field, values


def test_bad_rebalance_values_are_refused_by_the_rebalance_naming_the_field(platform: Platform, image: str) -> None:
    """The API's POST /v1/pool/rebalance without dry_run calls rebalance() directly: it must check
    its values as the plan does, before anything moves."""
    lopsided(platform)
    wrong: dict[str, str] = {}
    for values, field in BAD_REBALANCE:
        try:
            started = platform.drains.rebalance(**values)  # type: ignore[arg-type]
        except InvalidInput as err:
            if err.field != field:
                wrong[str(values)] = f"InvalidInput naming {err.field}"
            continue
        except FlexvmError as err:
            wrong[str(values)] = f"{err.code}: {err.message}"
            continue
        wrong[str(values)] = f"accepted: {wait_done(platform, started.id).status.value}"
    assert wrong == {}
