"""Resizing a VM on fake hosts: the plan says the path, the result matches it.

Pins: hot grows vCPUs and memory (the guest shows them, the record and the host's claims follow,
no restart); move-then-hot ends on another host at the new size with the source's claims released;
beyond the ceilings only with allow_restart, new ceilings recorded; stopped and deallocated VMs just
record (a stopped one moves its disk if its host has no room); same and unknown sizes are refused
naming 'size'; a size no host can hold is refused before anything changes; fewer vCPUs while
running is refused under TCG; a shrink into memory the guest uses is a Conflict unless forced; an
injected failure leaves the record at the guest's shape and no moving_to; a VM is busy meanwhile.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import Busy, CapacityError, Conflict, InvalidInput, InvalidState, Option, Remedy
from flexvm.model.guest import GuestState
from flexvm.model.units import GIB
from flexvm.model.vm import PowerState
from flexvm.platform import Platform
from tests.unit.flex_helpers import Gate, claims, failed, finish, guest, make_vm, quick_image, volumes_of
from tests.unit.pool_helpers import add_host, pool_settings, run
from tests.unit.waiting import wait_done

DISK = 4 * GIB  # the OS disk of the B1 sizes


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    return quick_image(platform, small_disk)


def two_hosts(platform: Platform, a_mib: int = 8192, b_mib: int = 8192) -> tuple[FakeDriver, FakeDriver]:
    """Hosts 'a' and 'b' (512 MiB of each kept for the host itself)."""
    return add_host(platform, "a", memory_mib=a_mib), add_host(platform, "b", memory_mib=b_mib)


def crowded_a(platform: Platform) -> tuple[FakeDriver, FakeDriver]:
    """'a' has 3.5 GiB for guests and holds 'filler' (2 GiB): 1.5 GiB free; 'b' is empty."""
    a, b = two_hosts(platform, a_mib=4096)
    make_vm(platform, "filler", "Standard_B1ms")
    return a, b


def shape(platform: Platform, name: str) -> tuple[str, int, int, str | None]:
    vm = platform.vms.get(name)
    return vm.size, vm.vcpus, vm.memory_mib, vm.host


def live_shape(driver: FakeDriver, name: str) -> tuple[int, int]:
    info = driver.guest_info(name)
    assert info is not None
    return info.vcpus, info.memory_kib // 1024


def operations_on(platform: Platform, name: str) -> list[str]:
    return [op.kind for op in platform.runner.list(target=name)]


def ready_lines(platform: Platform, name: str) -> list[str]:
    return [line for line in platform.vms.console(name).text.splitlines() if "flexvm: ready" in line]


# --- hot ---------------------------------------------------------------------------------------


def test_hot_grows_vcpus_and_memory_and_the_record_and_claims_follow(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1")
    plan = platform.resizer.plan("web1", "Standard_B2s")
    assert (plan.path, plan.host, plan.destination) == ("hot", "a", None)
    assert (plan.current, plan.target) == ("Standard_B1s", "Standard_B2s")
    assert plan.steps[0] == "hot-plug vCPUs: 1 -> 2" and plan.steps[1].startswith("grow memory")
    assert shape(platform, "web1") == ("Standard_B1s", 1, 1024, "a"), "a plan changes nothing"
    assert operations_on(platform, "web1") == ["vm.create"]

    done = run(platform, platform.resizer.resize("web1", "Standard_B2s"))

    assert done.result["path"] == "hot" and done.result["restarted"] is False
    assert done.result["dimm_plugged"] is True and done.result["guest_confirmed"] is True
    assert live_shape(a, "web1") == (2, 4096)
    assert shape(platform, "web1") == ("Standard_B2s", 2, 4096, "a")
    vm = platform.vms.get("web1")
    assert (vm.moving_to, vm.active_operation_id, vm.power_state) == (None, None, PowerState.RUNNING)
    assert (vm.max_size, vm.max_vcpus, vm.max_memory_mib) == ("Standard_B4ms", 4, 16384), "ceilings unchanged"
    assert claims(platform, "a") == Allocation(2, 4096, DISK)
    g = guest(a, "web1")
    assert g is not None and g.boots == 1 and len(ready_lines(platform, "web1")) == 1, "never restarted"


def test_move_then_hot_ends_on_the_other_host_at_the_new_size(platform: Platform, image: str) -> None:
    a, b = crowded_a(platform)
    make_vm(platform, "web1")  # 1 GiB: a has 0.5 GiB left, too little to grow to 2 GiB
    plan = platform.resizer.plan("web1", "Standard_B1ms")
    assert (plan.path, plan.host, plan.destination) == ("move-then-hot", "a", "b")
    assert plan.steps[0].startswith("live-migrate to b") and plan.estimate_seconds > 2.0

    done = run(platform, platform.resizer.resize("web1", "Standard_B1ms"))

    assert done.result["path"] == "move-then-hot" and done.result["move"]["to"] == "b"
    vm = platform.vms.get("web1")
    assert (vm.size, vm.memory_mib, vm.host, vm.disk_host, vm.moving_to) == ("Standard_B1ms", 2048, "b", "b", None)
    assert claims(platform, "a") == Allocation(1, 2048, DISK), "only the filler is left on a"
    assert claims(platform, "b") == Allocation(1, 2048, DISK)
    assert live_shape(b, "web1") == (1, 2048)
    assert guest(a, "web1") is None and volumes_of(a, "web1") == []
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.RUNNING and g.boots == 1


def test_the_room_for_the_new_size_is_held_on_the_destination_while_it_moves(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """move-then-hot holds room on the destination from the request on (moving_to), so nothing
    else may take it meanwhile. The room it needs there is the *new* size's, not the old one's:
    otherwise a create during the move fits, and the hot step then overfills the destination."""
    a, _b = two_hosts(platform, a_mib=4096, b_mib=4096)  # 3.5 GiB for guests on each
    make_vm(platform, "filler", "Standard_B1ms")
    make_vm(platform, "web1")
    gate = Gate(monkeypatch, a, "migrate")
    operation = platform.resizer.resize("web1", "Standard_B1ms")  # to b, then 1 -> 2 GiB
    intruder = None
    try:
        gate.wait_reached()
        held = claims(platform, "b").memory_mib
        with contextlib.suppress(CapacityError):
            intruder = platform.vms.create("intruder", "Standard_B1ms", "img", host="b")  # 2 GiB of b's 3.5
    finally:
        finish(platform, gate, operation)
        if intruder is not None:
            wait_done(platform, intruder.id)
    assert held == 2048, f"b holds {held} MiB for web1 while it moves; it will need 2048"
    assert intruder is None, "a create took the room web1 needs on b"


# --- restart -------------------------------------------------------------------------------------


def test_beyond_the_ceilings_needs_allow_restart_and_records_new_ceilings(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1", max_size="Standard_B1ms")  # may grow to 1 vCPU, 2 GiB live
    for attempt in (platform.resizer.plan, platform.resizer.resize):
        with pytest.raises(InvalidState) as caught:
            attempt("web1", "Standard_B2s")
        assert "needs a restart" in caught.value.message and "ceilings" in caught.value.details
        assert caught.value.remedy == Remedy(option=Option.ALLOW_RESTART)
        assert "--" not in caught.value.message, "the CLI words the flag, not the service"
    assert operations_on(platform, "web1") == ["vm.create"]
    plan = platform.resizer.plan("web1", "Standard_B2s", allow_restart=True)
    assert (plan.path, plan.host, plan.destination) == ("restart", "a", None)
    assert any("restarts" in w for w in plan.warnings)

    done = run(platform, platform.resizer.resize("web1", "Standard_B2s", allow_restart=True))

    assert done.result["restarted"] is True
    vm = platform.vms.get("web1")
    assert (vm.size, vm.vcpus, vm.memory_mib, vm.power_state) == ("Standard_B2s", 2, 4096, PowerState.RUNNING)
    assert (vm.max_size, vm.max_vcpus, vm.max_memory_mib) == ("Standard_B4ms", 4, 16384)
    g = guest(a, "web1")
    assert g is not None and g.state is GuestState.RUNNING
    assert (g.spec.vcpus, g.spec.memory_mib, g.spec.max_vcpus) == (2, 4096, 4)
    lines = ready_lines(platform, "web1")
    assert len(lines) == 2 and "cpus=2" in lines[-1], "booted again, at the new size"
    assert claims(platform, "a") == Allocation(2, 4096, DISK)


def test_a_restart_resize_without_room_here_moves_and_starts_on_the_other_host(platform: Platform, image: str) -> None:
    a, b = crowded_a(platform)
    make_vm(platform, "web1", max_size="Standard_B1s")  # no room to grow live at all
    plan = platform.resizer.plan("web1", "Standard_B1ms", allow_restart=True)
    assert (plan.path, plan.destination) == ("restart", "b")

    run(platform, platform.resizer.resize("web1", "Standard_B1ms", allow_restart=True))

    vm = platform.vms.get("web1")
    assert (vm.size, vm.host, vm.disk_host, vm.moving_to, vm.power_state) == (
        "Standard_B1ms",
        "b",
        "b",
        None,
        PowerState.RUNNING,
    )
    assert vm.max_size == "Standard_B4ms"
    assert claims(platform, "a") == Allocation(1, 2048, DISK)
    assert claims(platform, "b") == Allocation(1, 2048, DISK)
    assert live_shape(b, "web1") == (1, 2048)
    assert guest(a, "web1") is None and volumes_of(a, "web1") == []


def test_fewer_vcpus_while_running_is_refused_under_tcg_unless_restarting(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1", "Standard_B2s")
    for attempt in (platform.resizer.plan, platform.resizer.resize):
        with pytest.raises(InvalidState) as caught:
            attempt("web1", "Standard_B1ms")
        assert "TCG" in caught.value.message and caught.value.remedy == Remedy(option=Option.ALLOW_RESTART)
    assert shape(platform, "web1") == ("Standard_B2s", 2, 4096, "a")
    done = run(platform, platform.resizer.resize("web1", "Standard_B1ms", allow_restart=True))
    assert done.result["path"] == "restart"
    assert live_shape(a, "web1") == (1, 2048)
    assert shape(platform, "web1") == ("Standard_B1ms", 1, 2048, "a")


# --- shrinking memory ----------------------------------------------------------------------------


def test_a_shrink_into_memory_the_guest_uses_is_a_conflict_unless_forced(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1", "Standard_B1ms")  # 2 GiB
    g = guest(a, "web1")
    assert g is not None
    g.used_mib = 1500  # more than 90% of 1 GiB
    for attempt in (platform.resizer.plan, platform.resizer.resize):
        with pytest.raises(Conflict) as caught:
            attempt("web1", "Standard_B1s")
        assert type(caught.value) is Conflict and "--" not in caught.value.message
        assert caught.value.details == {"used_kib": 1500 * 1024, "target_mib": 1024, "remedy": {"option": "force"}}
    assert shape(platform, "web1") == ("Standard_B1ms", 1, 2048, "a")
    assert operations_on(platform, "web1") == ["vm.create"]

    plan = platform.resizer.plan("web1", "Standard_B1s", force=True)
    assert plan.path == "hot" and any("(forced)" in w for w in plan.warnings)
    done = run(platform, platform.resizer.resize("web1", "Standard_B1s", force=True))
    assert done.result["dimm_plugged"] is False
    assert live_shape(a, "web1") == (1, 1024), "the balloon took it"
    assert shape(platform, "web1") == ("Standard_B1s", 1, 1024, "a")
    assert claims(platform, "a") == Allocation(1, 1024, DISK)


def test_a_shrink_the_guest_can_spare_needs_no_force(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1", "Standard_B1ms")  # the fake guest uses 64 MiB
    run(platform, platform.resizer.resize("web1", "Standard_B1s"))
    assert live_shape(a, "web1") == (1, 1024)
    assert shape(platform, "web1") == ("Standard_B1s", 1, 1024, "a")


# --- stopped and deallocated: record -------------------------------------------------------------


def test_a_stopped_vm_is_redefined_at_the_new_size_and_stays_stopped(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1")
    run(platform, platform.vms.stop("web1"))
    plan = platform.resizer.plan("web1", "Standard_B2s")
    assert (plan.path, plan.host, plan.destination) == ("record", "a", None)
    assert "stays stopped" in plan.steps[0]

    done = run(platform, platform.resizer.resize("web1", "Standard_B2s"))

    assert done.result == {**done.result, "path": "record", "restarted": False}
    vm = platform.vms.get("web1")
    assert (vm.size, vm.vcpus, vm.memory_mib, vm.power_state) == ("Standard_B2s", 2, 4096, PowerState.STOPPED)
    g = guest(a, "web1")
    assert g is not None and g.state is GuestState.SHUTOFF
    assert (g.spec.vcpus, g.spec.memory_mib) == (2, 4096)
    assert claims(platform, "a") == Allocation(2, 4096, DISK), "a stopped VM keeps its claim, at the new size"
    run(platform, platform.vms.start("web1"))
    assert live_shape(a, "web1") == (2, 4096)


def test_a_deallocated_vm_records_the_size_and_claims_it_when_started(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1")
    run(platform, platform.vms.deallocate("web1"))
    plan = platform.resizer.plan("web1", "Standard_B2s")
    assert (plan.path, plan.host, plan.destination) == ("record", "a", None)

    run(platform, platform.resizer.resize("web1", "Standard_B2s"))

    vm = platform.vms.get("web1")
    assert (vm.size, vm.vcpus, vm.memory_mib, vm.host) == ("Standard_B2s", 2, 4096, None)
    assert vm.power_state is PowerState.DEALLOCATED
    assert claims(platform, "a") == Allocation(0, 0, DISK), "only its disk"
    assert guest(a, "web1") is None
    run(platform, platform.vms.start("web1"))
    assert claims(platform, "a") == Allocation(2, 4096, DISK)
    assert live_shape(a, "web1") == (2, 4096)


def test_a_stopped_vm_without_room_here_moves_its_disk_and_stays_stopped(platform: Platform, image: str) -> None:
    a, b = crowded_a(platform)
    make_vm(platform, "web1")
    run(platform, platform.vms.stop("web1"))
    plan = platform.resizer.plan("web1", "Standard_B1ms")
    assert (plan.path, plan.destination) == ("record", "b")

    run(platform, platform.resizer.resize("web1", "Standard_B1ms"))

    vm = platform.vms.get("web1")
    assert (vm.size, vm.host, vm.disk_host, vm.moving_to, vm.power_state) == (
        "Standard_B1ms",
        "b",
        "b",
        None,
        PowerState.STOPPED,
    )
    assert claims(platform, "a") == Allocation(1, 2048, DISK)
    assert claims(platform, "b") == Allocation(1, 2048, DISK)
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.SHUTOFF and g.spec.memory_mib == 2048
    assert guest(a, "web1") is None and volumes_of(a, "web1") == []


# --- refusals ------------------------------------------------------------------------------------


def test_the_same_or_an_unknown_size_is_refused_naming_size(platform: Platform, image: str) -> None:
    two_hosts(platform)
    make_vm(platform, "web1")
    for size in ("Standard_B1s", "Standard_Nope"):
        for attempt in (platform.resizer.plan, platform.resizer.resize):
            with pytest.raises(InvalidInput) as caught:
                attempt("web1", size)
            assert caught.value.field == "size" and size in caught.value.message
    assert operations_on(platform, "web1") == ["vm.create"]


def test_a_size_no_host_can_hold_is_refused_before_anything_changes(platform: Platform, image: str) -> None:
    two_hosts(platform)  # 7.5 GiB for guests on each
    make_vm(platform, "web1")
    for attempt in (platform.resizer.plan, platform.resizer.resize):
        with pytest.raises(CapacityError) as caught:
            attempt("web1", "Standard_B2ms")  # 8 GiB
        assert "no host can hold" in caught.value.message
        assert set(caught.value.details["hosts"]) == {"a", "b"}
    assert shape(platform, "web1") == ("Standard_B1s", 1, 1024, "a")
    assert platform.vms.get("web1").moving_to is None
    assert claims(platform, "a") == Allocation(1, 1024, DISK) and claims(platform, "b") == Allocation()
    assert operations_on(platform, "web1") == ["vm.create"]


def test_a_second_operation_during_a_resize_is_busy_naming_the_first(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1")
    gate = Gate(monkeypatch, a, "set_vcpus")
    operation = platform.resizer.resize("web1", "Standard_B2s")
    try:
        gate.wait_reached()
        for second in (
            lambda: platform.mover.migrate("web1", "b"),
            lambda: platform.resizer.resize("web1", "Standard_B1ms"),
            lambda: platform.vms.stop("web1"),
        ):
            with pytest.raises(Busy) as caught:
                second()
            assert caught.value.details["operation_id"] == operation.id
            assert operation.id in caught.value.message
    finally:
        done = finish(platform, gate, operation)
    assert done.status.value == "succeeded"


# --- failures ------------------------------------------------------------------------------------


def test_a_failed_vcpu_plug_leaves_the_record_at_the_guests_size(platform: Platform, image: str) -> None:
    a, _b = two_hosts(platform)
    make_vm(platform, "web1")
    a.fail_next("set_vcpus")
    failed(platform, platform.resizer.resize("web1", "Standard_B2s"), "HypervisorError")
    assert live_shape(a, "web1") == (1, 1024)
    assert shape(platform, "web1") == ("Standard_B1s", 1, 1024, "a")
    vm = platform.vms.get("web1")
    assert (vm.moving_to, vm.active_operation_id) == (None, None)
    assert claims(platform, "a") == Allocation(1, 1024, DISK), "the claim made at request time is released"


def test_a_failed_dimm_plug_leaves_the_record_at_the_guests_size(platform: Platform, image: str) -> None:
    """The vCPUs were plugged before the DIMM failed: the record must say what the guest has
    (or the vCPUs be taken back), not the old count, or the host's claims understate it."""
    a, _b = two_hosts(platform)
    make_vm(platform, "web1")
    a.fail_next("attach_memory")
    failed(platform, platform.resizer.resize("web1", "Standard_B2s"), "HypervisorError")
    vm = platform.vms.get("web1")
    assert vm.moving_to is None
    assert (vm.vcpus, vm.memory_mib) == live_shape(a, "web1")


def test_a_failed_migration_in_move_then_hot_leaves_the_vm_where_it_was(platform: Platform, image: str) -> None:
    a, b = crowded_a(platform)
    make_vm(platform, "web1")
    a.fail_next("migrate")
    failed(platform, platform.resizer.resize("web1", "Standard_B1ms"), "HypervisorError")
    vm = platform.vms.get("web1")
    assert (vm.size, vm.host, vm.moving_to, vm.power_state) == ("Standard_B1s", "a", None, PowerState.RUNNING)
    assert live_shape(a, "web1") == (1, 1024)
    assert guest(b, "web1") is None and volumes_of(b, "web1") == []
    assert claims(platform, "b") == Allocation()
    assert claims(platform, "a") == Allocation(2, 3072, 2 * DISK)


def test_a_restart_resize_that_fails_before_moving_leaves_the_vm_running_where_it_was(
    platform: Platform, image: str
) -> None:
    """The guest refuses to stop: nothing has moved, so the room held on the destination goes
    and the VM is recorded as what it still is, running on a."""
    a, _b = crowded_a(platform)
    make_vm(platform, "web1", max_size="Standard_B1s")
    a.fail_next("shutdown")
    failed(platform, platform.resizer.resize("web1", "Standard_B1ms", allow_restart=True), "HypervisorError")
    g = guest(a, "web1")
    assert g is not None and g.state is GuestState.RUNNING
    vm = platform.vms.get("web1")
    assert (vm.size, vm.host, vm.moving_to, vm.power_state) == ("Standard_B1s", "a", None, PowerState.RUNNING)
    assert claims(platform, "b") == Allocation()
