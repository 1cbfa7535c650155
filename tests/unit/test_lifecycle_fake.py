"""VM lifecycle services on the fake hypervisor: what each operation leaves on the host and in the
records, and that a failed operation leaves nothing behind.

Pins: create/stop/start/restart/deallocate/delete with the fake's guests and volumes checked after
each; injected failures at each create step roll back completely; a guest that never becomes
ready is kept for its console; an ignored graceful stop is forced; one operation per VM at a time;
request validation (names, sizes, images, capacity, user data, disk growth); sizes and how many
fit; parallel creates never over-allocate a host.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.drivers.fake import FakeDriver, FakeVolume
from flexvm.errors import (
    AlreadyExists,
    Busy,
    CapacityError,
    Conflict,
    FlexvmError,
    InvalidInput,
    InvalidState,
    NotFound,
)
from flexvm.model.guest import GuestState
from flexvm.model.operation import Operation, OperationStatus
from flexvm.model.units import GIB
from flexvm.model.vm import PowerState, ProvisioningState
from flexvm.platform import Platform
from tests.unit.waiting import wait_done

# Standard_B1s: 1 vCPU, 1 GiB memory, 4 GiB disk. The fixture's host: 16 vCPUs, 7.5 GiB, 100 GiB.
B1S = Allocation(1, 1024, 4 * GIB)
READY_TIMEOUT = 1.0
STOP_TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def quick_timeouts(platform: Platform) -> None:
    """Shorter readiness and stop timeouts than the shared fixture's, so waiting tests stay fast."""
    platform.booter.settings = dataclasses.replace(
        platform.booter.settings, ready_timeout=READY_TIMEOUT, stop_timeout=STOP_TIMEOUT
    )


def run(platform: Platform, operation: Operation, status: str = "succeeded") -> Operation:
    done = wait_done(platform, operation.id)
    assert done.status.value == status, done.error
    return done


def create(platform: Platform, name: str = "web1", size: str = "Standard_B1s") -> Operation:
    return run(platform, platform.vms.create(name, size, "img"))


def allocated(platform: Platform) -> Allocation:
    return platform.hosts.detail("local").allocated


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def vm_gone(platform: Platform, name: str) -> bool:
    with pytest.raises(NotFound):
        platform.vms.get(name)
    return True


def failed_steps(operation: Operation) -> list[str]:
    """The steps that failed (a failed step whose part-done work was undone keeps its error)."""
    return [step.name for step in operation.steps if step.error is not None and step.error.get("code") != "UndoFailed"]


# --- the whole life of a VM ----------------------------------------------------------------


def test_create_runs_the_guest_and_claims_its_size(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    done = create(platform)
    assert [s.name for s in done.steps] == [
        "claim",
        "image",
        "os-disk",
        "define",
        "start",
        "booted",
        "wait-ready",
        "running",
    ]
    assert all(s.status == "done" for s in done.steps)
    assert done.progress == 100
    assert done.result["boot_seconds"] >= 0
    vm = platform.vms.get("web1")
    assert vm.provisioning_state is ProvisioningState.SUCCEEDED
    assert vm.power_state is PowerState.RUNNING
    assert vm.boot_seconds is not None and vm.ready_at is not None
    assert (vm.host, vm.disk_host) == ("local", "local")
    assert vm.active_operation_id is None
    assert allocated(platform) == B1S
    guest = fake_host.host.guests["web1"]
    assert guest.state is GuestState.RUNNING
    assert (guest.spec.vcpus, guest.spec.memory_mib, guest.spec.vm_id) == (1, 1024, vm.id)
    assert fake_host.host.instances["web1-os.qcow2"].size == 4 * GIB
    assert "flexvm: ready name=web1" in platform.vms.console("web1").text
    assert platform.hosts.detail("local").vms == ["web1"]


def test_stop_start_restart_deallocate_delete(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    host = fake_host.host
    create(platform)

    stopped = run(platform, platform.vms.stop("web1"))
    assert stopped.result == {"forced": False}
    assert host.guests["web1"].state is GuestState.SHUTOFF
    assert platform.vms.get("web1").power_state is PowerState.STOPPED
    assert allocated(platform) == B1S  # a stopped VM keeps its claim

    run(platform, platform.vms.start("web1"))
    assert host.guests["web1"].state is GuestState.RUNNING
    assert host.guests["web1"].boots == 2
    assert platform.vms.get("web1").power_state is PowerState.RUNNING

    restarted = run(platform, platform.vms.restart("web1"))
    assert restarted.result["forced"] is False
    assert host.guests["web1"].boots == 3
    assert host.guests["web1"].state is GuestState.RUNNING
    assert platform.vms.get("web1").power_state is PowerState.RUNNING

    deallocated = run(platform, platform.vms.deallocate("web1"))
    assert deallocated.result["disk_kept_on"] == "local"
    vm = platform.vms.get("web1")
    assert (vm.power_state, vm.host, vm.disk_host) == (PowerState.DEALLOCATED, None, "local")
    assert "web1" not in host.guests  # undefined: the host holds nothing for it but the disk
    assert "web1-os.qcow2" in host.instances
    assert allocated(platform) == Allocation(0, 0, 4 * GIB)
    assert platform.hosts.detail("local").vms == ["web1"]

    run(platform, platform.vms.delete("web1"))
    assert "web1" not in host.guests
    assert host.instances == {}
    assert vm_gone(platform, "web1")
    assert allocated(platform) == Allocation()
    operations = platform.runner.list(target="web1")
    assert sorted(op.kind for op in operations) == sorted(
        ["vm.create", "vm.stop", "vm.start", "vm.restart", "vm.deallocate", "vm.delete"]
    )
    assert all(op.status is OperationStatus.SUCCEEDED for op in operations)


def test_a_deallocated_vm_starts_again_where_its_disk_is(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    vm_id = platform.vms.get("web1").id
    run(platform, platform.vms.deallocate("web1"))
    run(platform, platform.vms.start("web1"))
    vm = platform.vms.get("web1")
    assert (vm.power_state, vm.host, vm.disk_host, vm.id) == (PowerState.RUNNING, "local", "local", vm_id)
    assert fake_host.host.guests["web1"].state is GuestState.RUNNING
    assert allocated(platform) == B1S
    # Its console shows both boots (the log outlives the definition).
    assert platform.vms.console("web1").text.count("flexvm: ready name=web1") == 2


def test_delete_a_deallocated_vm_removes_its_disk(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    run(platform, platform.vms.deallocate("web1"))
    run(platform, platform.vms.delete("web1"))
    assert fake_host.host.instances == {}
    assert vm_gone(platform, "web1")
    assert allocated(platform) == Allocation()


def test_power_actions_refused_in_the_wrong_state(platform: Platform, image: str) -> None:
    create(platform)
    with pytest.raises(InvalidState, match="cannot start VM 'web1' while it is running"):
        platform.vms.start("web1")
    run(platform, platform.vms.stop("web1"))
    for action in (platform.vms.stop, platform.vms.restart):
        with pytest.raises(InvalidState, match="while it is stopped"):
            action("web1")


def test_unknown_vm_is_not_found(platform: Platform) -> None:
    for action in (platform.vms.get, platform.vms.start, platform.vms.stop, platform.vms.delete):
        with pytest.raises(NotFound, match="VM 'ghost' not found"):
            action("ghost")


# --- failed creates leave nothing ----------------------------------------------------------

CREATE_STEPS = [
    ("upload_image_volume", "image"),
    ("create_overlay", "os-disk"),
    ("define", "define"),
    ("start", "start"),
]


@pytest.mark.parametrize(("method", "step"), CREATE_STEPS)
def test_a_create_failing_at_a_step_rolls_back_completely(
    platform: Platform, fake_host: FakeDriver, image: str, method: str, step: str
) -> None:
    fake_host.fail_next(method)
    failed = run(platform, platform.vms.create("web1", "Standard_B1s", "img"), "failed")
    assert failed_steps(failed) == [step]
    assert failed.error is not None
    assert failed.error["code"] == "HypervisorError"
    assert method in failed.error["message"]
    assert vm_gone(platform, "web1")
    assert fake_host.host.guests == {}
    assert fake_host.host.instances == {}
    if step == "image":  # an upload cut short is not marked complete, so it is redone next time
        assert not any(name.endswith(".complete") for name in fake_host.host.images)
    assert allocated(platform) == Allocation()
    # The operation record stays, so the failure can be read later.
    assert platform.runner.get(failed.id).status is OperationStatus.FAILED

    create(platform)
    assert fake_host.host.guests["web1"].state is GuestState.RUNNING


def test_a_guest_that_never_becomes_ready_is_kept_for_its_console(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    fake_host.host.ready_delay = None
    operation = platform.vms.create("web1", "Standard_B1s", "img")
    # While it waits, the guest prints something that is not the readiness line.
    wait_for(lambda: "web1" in fake_host.host.guests and fake_host.host.guests["web1"].state is GuestState.RUNNING)
    boot_text = b"Linux version 6.1\nwaiting for root device...\n"
    fake_host.host.instances["web1.console.log"] = FakeVolume(len(boot_text), data=boot_text)

    failed = run(platform, operation, "failed")
    assert failed.error is not None
    assert failed.error["code"] == "OperationTimeout"
    assert "did not report ready" in failed.error["message"]
    assert "waiting for root device" in failed.error["details"]["console_tail"]
    assert failed_steps(failed) == ["wait-ready"]
    vm = platform.vms.get("web1")
    assert vm.provisioning_state is ProvisioningState.FAILED
    assert vm.power_state is PowerState.RUNNING
    assert vm.error is not None and "did not report ready" in vm.error
    assert vm.active_operation_id is None
    assert fake_host.host.guests["web1"].state is GuestState.RUNNING
    assert "waiting for root device" in platform.vms.console("web1").text
    assert platform.vms.console("web1", offset=len(boot_text)).text == ""
    assert allocated(platform) == B1S  # the kept guest still holds its claim

    run(platform, platform.vms.delete("web1"))
    assert fake_host.host.guests == {} and fake_host.host.instances == {}


def test_a_guest_that_powers_off_while_booting_fails_the_create_at_once(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    fake_host.host.ready_delay = None
    operation = platform.vms.create("web1", "Standard_B1s", "img")
    wait_for(lambda: "web1" in fake_host.host.guests and fake_host.host.guests["web1"].state is GuestState.RUNNING)
    fake_host.destroy("web1")
    failed = run(platform, operation, "failed")
    assert failed.error is not None
    assert failed.error["code"] == "OperationFailed"
    assert "stopped while booting" in failed.error["message"]
    vm = platform.vms.get("web1")
    assert (vm.provisioning_state, vm.power_state) == (ProvisioningState.FAILED, PowerState.STOPPED)


# --- stopping ------------------------------------------------------------------------------


def test_an_ignored_graceful_stop_is_forced_after_the_timeout(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    create(platform)
    fake_host.host.ignores_shutdown = True
    started = time.monotonic()
    done = run(platform, platform.vms.stop("web1"))
    assert time.monotonic() - started >= STOP_TIMEOUT
    assert done.result == {"forced": True}
    assert [s.name for s in done.steps] == ["shutdown", "power-off", "stopped"]
    assert fake_host.host.guests["web1"].state is GuestState.SHUTOFF
    assert platform.vms.get("web1").power_state is PowerState.STOPPED


def test_a_forced_stop_pulls_the_power_at_once(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    fake_host.host.ignores_shutdown = True
    done = run(platform, platform.vms.stop("web1", force=True))
    assert done.result == {"forced": True}
    assert [s.name for s in done.steps] == ["power-off", "stopped"]
    assert fake_host.host.guests["web1"].state is GuestState.SHUTOFF


def test_a_failed_stop_records_what_the_host_shows(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    fake_host.fail_next("shutdown")
    failed = run(platform, platform.vms.stop("web1"), "failed")
    assert failed_steps(failed) == ["shutdown"]
    vm = platform.vms.get("web1")
    assert vm.power_state is PowerState.RUNNING
    assert vm.active_operation_id is None
    run(platform, platform.vms.stop("web1"))


def test_a_failed_start_of_a_deallocated_vm_releases_its_claim(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    create(platform)
    run(platform, platform.vms.deallocate("web1"))
    fake_host.fail_next("start")
    run(platform, platform.vms.start("web1"), "failed")
    vm = platform.vms.get("web1")
    assert (vm.power_state, vm.host, vm.disk_host) == (PowerState.DEALLOCATED, None, "local")
    assert "web1" not in fake_host.host.guests
    assert allocated(platform) == Allocation(0, 0, 4 * GIB)


def test_a_failed_delete_keeps_the_vm_to_retry(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    fake_host.fail_next("undefine")
    run(platform, platform.vms.delete("web1"), "failed")
    vm = platform.vms.get("web1")
    assert vm.provisioning_state is ProvisioningState.FAILED
    assert vm.error is not None and "retry the delete" in vm.error
    run(platform, platform.vms.delete("web1"))
    assert vm_gone(platform, "web1")
    assert fake_host.host.guests == {} and fake_host.host.instances == {}


# --- one operation at a time ---------------------------------------------------------------


def test_an_operation_during_a_create_is_refused_as_busy(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    fake_host.host.ready_delay = 0.5
    creating = platform.vms.create("web1", "Standard_B1s", "img")
    for action in (platform.vms.stop, platform.vms.delete):
        with pytest.raises(Busy) as caught:
            action("web1")
        assert caught.value.details["operation_id"] == creating.id
        assert creating.id in caught.value.message
    run(platform, creating)
    assert platform.vms.get("web1").power_state is PowerState.RUNNING


def test_every_request_during_a_stop_is_refused_as_busy_naming_the_stop(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    create(platform)
    fake_host.host.ignores_shutdown = True  # the stop runs for the whole stop timeout
    stopping = platform.vms.stop("web1")
    attempts: dict[str, Callable[[], object]] = {
        "stop": lambda: platform.vms.stop("web1"),
        "start": lambda: platform.vms.start("web1"),
        "restart": lambda: platform.vms.restart("web1"),
        "deallocate": lambda: platform.vms.deallocate("web1"),
        "resize-disk": lambda: platform.vms.resize_disk("web1", 8 * GIB),
        "delete": lambda: platform.vms.delete("web1"),
    }
    not_busy = {}
    for action, attempt in attempts.items():
        try:
            attempt()
        except Busy as err:
            assert err.details["operation_id"] == stopping.id
        except FlexvmError as err:
            not_busy[action] = f"{type(err).__name__}: {err.message}"
        else:
            not_busy[action] = "accepted"
    run(platform, stopping)
    assert not_busy == {}, "a second operation on a busy VM must be refused as Busy with the first one's id"


# --- validation ----------------------------------------------------------------------------


def test_a_duplicate_name_is_refused(platform: Platform, image: str) -> None:
    create(platform)
    with pytest.raises(AlreadyExists, match="VM 'web1' already exists"):
        platform.vms.create("web1", "Standard_B1s", "img")


def test_an_unknown_size_lists_the_known_ones(platform: Platform, image: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        platform.vms.create("web1", "Standard_Huge", "img")
    assert caught.value.field == "size"
    assert "unknown size 'Standard_Huge'" in caught.value.message
    assert "Standard_B1s" in caught.value.message and "Standard_D2s_v5" in caught.value.message


def test_an_unknown_image_lists_the_known_ones(platform: Platform, image: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        platform.vms.create("web1", "Standard_B1s", "nope")
    assert caught.value.field == "image"
    assert "unknown image 'nope'" in caught.value.message
    assert "img" in caught.value.message


@pytest.mark.parametrize("name", ["a'/><x", "$(id)", "..", "", "1web"])
def test_a_bad_vm_name_is_refused(platform: Platform, image: str, name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        platform.vms.create(name, "Standard_B1s", "img")
    assert caught.value.field == "name"


def test_a_size_larger_than_the_host_can_ever_hold(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    with pytest.raises(CapacityError) as caught:
        platform.vms.create("big", "Standard_D8s_v5", "img")  # 8 vCPUs, 32 GiB: the host has 7.5 GiB to give
    err = caught.value
    reason = err.details["hosts"]["local"]
    assert "larger than this host can ever hold" in reason
    assert "32G memory" in reason and "7.5G" in reason
    assert reason in err.message
    assert "Free now: local: 16 of 16 vCPUs, 7.5G of 7.5G memory, 100G of 100G disk free" in err.message
    # A refused request leaves nothing: no VM, no operation, no guest.
    assert vm_gone(platform, "big")
    assert platform.runner.list(target="big") == []
    assert fake_host.host.guests == {}


def test_when_the_host_is_full_the_error_says_what_is_free(platform: Platform, image: str) -> None:
    for index in range(3):
        create(platform, f"vm{index}", "Standard_B1ms")  # 2 GiB each: 6 of 7.5 GiB
    with pytest.raises(CapacityError) as caught:
        platform.vms.create("one-more", "Standard_B1ms", "img")
    assert caught.value.details["hosts"] == {"local": "needs 2G memory, 1.5G free"}
    assert "1.5G of 7.5G memory" in caught.value.message


def test_a_deallocated_vm_cannot_start_when_its_room_was_taken(platform: Platform, image: str) -> None:
    create(platform, "first", "Standard_B1ms")
    run(platform, platform.vms.deallocate("first"))
    for index in range(3):
        create(platform, f"vm{index}", "Standard_B1ms")
    with pytest.raises(CapacityError, match="cannot start 'first' on host local"):
        platform.vms.start("first")
    vm = platform.vms.get("first")
    assert (vm.power_state, vm.host, vm.active_operation_id) == (PowerState.DEALLOCATED, None, None)


def test_user_data_needs_a_cloud_init_image(platform: Platform, image: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        platform.vms.create("web1", "Standard_B1s", "img", user_data="#cloud-config\n")
    assert caught.value.field == "user_data"
    assert "cloud-init" in caught.value.message
    assert vm_gone(platform, "web1")


# --- disks ---------------------------------------------------------------------------------


def test_grow_a_running_vms_disk_online(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    done = run(platform, platform.vms.resize_disk("web1", 8 * GIB))
    assert done.result == {"online": True, "size_bytes": 8 * GIB}
    assert fake_host.host.instances["web1-os.qcow2"].size == 8 * GIB
    vm = platform.vms.get("web1")
    assert vm.disk_bytes == 8 * GIB and vm.os_disk.size_bytes == 8 * GIB
    assert f"disk_bytes={8 * GIB}" in platform.vms.console("web1").text  # the guest saw it
    assert allocated(platform).disk_bytes == 8 * GIB


def test_grow_a_stopped_vms_disk_offline(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    run(platform, platform.vms.stop("web1"))
    done = run(platform, platform.vms.resize_disk("web1", 6 * GIB))
    assert done.result["online"] is False
    assert fake_host.host.instances["web1-os.qcow2"].size == 6 * GIB


@pytest.mark.parametrize(("size", "words"), [(4 * GIB, "already 4G"), (2 * GIB, "disks only grow")])
def test_same_size_or_shrinking_is_refused(
    platform: Platform, fake_host: FakeDriver, image: str, size: int, words: str
) -> None:
    create(platform)
    with pytest.raises(InvalidInput, match=words) as caught:
        platform.vms.resize_disk("web1", size)
    assert caught.value.field == "size"
    assert fake_host.host.instances["web1-os.qcow2"].size == 4 * GIB


def test_growing_past_the_hosts_disk_is_refused(platform: Platform, image: str) -> None:
    create(platform)
    with pytest.raises(CapacityError, match="cannot grow the disk of 'web1'"):
        platform.vms.resize_disk("web1", 200 * GIB)
    assert platform.vms.get("web1").disk_bytes == 4 * GIB


def test_a_failed_grow_releases_the_claim(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    create(platform)
    fake_host.fail_next("resize_instance_volume")
    run(platform, platform.vms.resize_disk("web1", 8 * GIB), "failed")
    assert platform.vms.get("web1").disk_bytes == 4 * GIB
    assert allocated(platform).disk_bytes == 4 * GIB
    assert fake_host.host.instances["web1-os.qcow2"].size == 4 * GIB


# --- sizes ---------------------------------------------------------------------------------


def test_custom_size_lifecycle(platform: Platform, image: str) -> None:
    size = platform.sizes.create("Lab_Small", 1, 256, 2 * GIB)
    assert (size.builtin, size.family) == (False, "custom")
    assert platform.sizes.get("Lab_Small") == size
    assert "Lab_Small" in [s.name for s in platform.sizes.all()]
    with pytest.raises(AlreadyExists):
        platform.sizes.create("Lab_Small", 1, 256, 2 * GIB)

    create(platform, "web1", "Lab_Small")
    vm = platform.vms.get("web1")
    assert (vm.size, vm.vcpus, vm.memory_mib) == ("Lab_Small", 1, 256)
    # The OS disk is at least the image's virtual size.
    assert vm.disk_bytes == 2 * GIB
    with pytest.raises(Conflict, match="used by VMs: web1") as caught:
        platform.sizes.delete("Lab_Small")
    assert caught.value.details == {"vms": ["web1"]}

    run(platform, platform.vms.delete("web1"))
    platform.sizes.delete("Lab_Small")
    with pytest.raises(InvalidInput, match="unknown size"):
        platform.sizes.get("Lab_Small")
    with pytest.raises(NotFound):
        platform.sizes.delete("Lab_Small")


def test_builtin_sizes_cannot_be_deleted_or_shadowed(platform: Platform) -> None:
    with pytest.raises(Conflict, match="built in"):
        platform.sizes.delete("Standard_B1s")
    with pytest.raises(AlreadyExists):
        platform.sizes.create("Standard_B1s", 1, 512, 4 * GIB)


@pytest.mark.parametrize(
    ("name", "vcpus", "memory_mib", "disk", "field"),
    [
        ("bad name", 1, 256, 2 * GIB, "name"),
        ("Ok", 0, 256, 2 * GIB, "vcpus"),
        ("Ok", 1, 16, 2 * GIB, "memory"),
        ("Ok", 1, 256, 1024, "disk"),
    ],
)
def test_a_bad_size_is_refused_naming_the_field(
    platform: Platform, name: str, vcpus: int, memory_mib: int, disk: int, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        platform.sizes.create(name, vcpus, memory_mib, disk)
    assert caught.value.field == field


def fits(platform: Platform, size: str) -> int:
    return next(f.fits_now for f in platform.sizes.list_with_fit() if f.size.name == size)


def test_how_many_fit_falls_as_vms_are_created(platform: Platform, image: str) -> None:
    # 7.5 GiB for guests: 7 x B1s (1 GiB), 3 x B1ms (2 GiB), none of D8s_v5 (32 GiB).
    assert (fits(platform, "Standard_B1s"), fits(platform, "Standard_B1ms")) == (7, 3)
    assert fits(platform, "Standard_D8s_v5") == 0
    create(platform, "a")
    assert (fits(platform, "Standard_B1s"), fits(platform, "Standard_B1ms")) == (6, 3)
    create(platform, "b")
    assert (fits(platform, "Standard_B1s"), fits(platform, "Standard_B1ms")) == (5, 2)
    run(platform, platform.vms.deallocate("a"))
    assert fits(platform, "Standard_B1s") == 6


def test_parallel_creates_never_overfill_the_host(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    # Standard_B1ms is 2 GiB: exactly 3 fit in the host's 7.5 GiB.
    expected = 3
    gate = threading.Barrier(20)
    accepted: list[Operation] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def attempt(index: int) -> None:
        gate.wait()
        try:
            operation = platform.vms.create(f"vm{index}", "Standard_B1ms", "img")
        except Exception as err:  # collected and checked below
            with lock:
                refused.append(err)
        else:
            with lock:
                accepted.append(operation)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(accepted) == expected
    assert len(refused) == 20 - expected
    assert all(isinstance(err, CapacityError) for err in refused), refused
    for operation in accepted:
        run(platform, operation)
    assert allocated(platform).memory_mib == expected * 2048
    running = [g for g in fake_host.host.guests.values() if g.state is GuestState.RUNNING]
    assert len(running) == expected
    assert len(platform.vms.list()) == expected
