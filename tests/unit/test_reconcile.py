"""The reconciler: what a restarted server does with operations the previous one left unfinished,
and how the records follow what the hosts really show.

Pins: an interrupted create is rolled back (guest, disks, row and claim gone; operation failed as
interrupted) unless its guest had already printed ready (then it is completed); interrupted deletes
and power changes are finished or re-read; a guest that powered itself off is recorded stopped;
domains flexvm did not make are reported and left alone; an unreachable host's VMs become unknown.

An interrupted operation is made by hand: the records a create writes before it runs (VM row and
running operation) plus whatever the fake host would show at the moment the server died.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.compute import guest_boot
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import NotFound
from flexvm.model.guest import GuestSpec, GuestState
from flexvm.model.operation import Operation, OperationStatus, Step
from flexvm.model.units import GIB
from flexvm.model.vm import Disk, Nic, PowerState, ProvisioningState, Vm
from flexvm.platform import Platform
from flexvm.store.db import utcnow
from flexvm.store.repositories import OperationRepo, VmRepo
from tests.unit.waiting import wait_done

STEPS_BEFORE_READY = ["image", "os-disk", "define", "start"]


def run(platform: Platform, operation: Operation) -> Operation:
    done = wait_done(platform, operation.id)
    assert done.status is OperationStatus.SUCCEEDED, done.error
    return done


def interrupted(
    platform: Platform,
    fake_host: FakeDriver,
    name: str,
    kind: str = "vm.create",
    *,
    done_steps: list[str] = STEPS_BEFORE_READY,
    vm_changes: dict[str, object] | None = None,
    params: dict[str, object] | None = None,
) -> tuple[Vm, Operation]:
    """The records of an operation on a new VM that a dead server left running, and the guest
    as far as the done steps had made it on the fake host."""
    image = platform.images.get("img")
    vm_id = str(uuid.uuid4())
    op_id = str(uuid.uuid4())
    vm = Vm(
        id=vm_id,
        name=name,
        size="Standard_B1s",
        image="img",
        vcpus=1,
        memory_mib=1024,
        disk_bytes=4 * GIB,
        provisioning_state=ProvisioningState.CREATING,
        power_state=PowerState.STARTING,
        host="local",
        disk_host="local",
        created_at=utcnow(),
        active_operation_id=op_id,
        disks=[Disk(f"{name}-os.qcow2", "os", 4 * GIB)],
        nics=[Nic("user", guest_boot.mac_for(vm_id))],
    )
    vm = dataclasses.replace(vm, **(vm_changes or {}))
    stamp = utcnow().isoformat()
    operation = Operation(
        id=op_id,
        kind=kind,
        target_kind="vm",
        target_name=name,
        status=OperationStatus.RUNNING,
        created_at=utcnow(),
        started_at=utcnow(),
        steps=[Step(step, "done", stamp, stamp) for step in done_steps],
        params=params or {},
    )
    with platform.db.session() as session:
        VmRepo(session).add(vm)
        session.flush()
        OperationRepo(session).add(operation)
    if "image" in done_steps:
        platform.images.ensure_on_host(fake_host, image)
    if "os-disk" in done_steps:
        fake_host.create_overlay(vm.os_disk.name, guest_boot.image_volume(image, "disk"), "qcow2", vm.disk_bytes)
    if "define" in done_steps:
        fake_host.define(guest_boot.guest_spec(vm, image, platform.hosts.get("local").accelerator))
    if "start" in done_steps:
        fake_host.start(name)
    return vm, operation


def allocated(platform: Platform) -> Allocation:
    return platform.hosts.detail("local").allocated


def assert_vm_gone(platform: Platform, name: str) -> None:
    with pytest.raises(NotFound):
        platform.vms.get(name)


# --- interrupted operations ----------------------------------------------------------------


def test_an_interrupted_create_whose_guest_never_became_ready_is_rolled_back(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    fake_host.host.ready_delay = None  # it had not printed ready when the server died
    _vm, operation = interrupted(platform, fake_host, "web1")
    assert fake_host.host.guests["web1"].state is GuestState.RUNNING
    assert allocated(platform) == Allocation(1, 1024, 4 * GIB)

    report = platform.reconciler.at_start()

    assert report.operations == {operation.id: "create rolled back"}
    assert fake_host.host.guests == {}
    assert fake_host.host.instances == {}
    assert_vm_gone(platform, "web1")
    assert allocated(platform) == Allocation()
    recorded = platform.runner.get(operation.id)
    assert recorded.status is OperationStatus.FAILED
    assert "interrupted" in recorded.message
    assert recorded.error is not None and recorded.error["code"] == "Interrupted"
    assert recorded.finished_at is not None


def test_an_interrupted_create_that_had_made_nothing_yet_is_rolled_back(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    _vm, operation = interrupted(platform, fake_host, "web1", done_steps=[])
    report = platform.reconciler.at_start()
    assert report.operations == {operation.id: "create rolled back"}
    assert_vm_gone(platform, "web1")
    assert platform.runner.get(operation.id).status is OperationStatus.FAILED


def test_an_interrupted_create_whose_guest_is_ready_is_completed(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    fake_host.host.ready_delay = 0.0  # the guest printed its readiness line before the server died
    _vm, operation = interrupted(platform, fake_host, "web1")

    report = platform.reconciler.at_start()

    assert report.operations == {operation.id: "create completed"}
    vm = platform.vms.get("web1")
    assert vm.provisioning_state is ProvisioningState.SUCCEEDED
    assert vm.power_state is PowerState.RUNNING
    assert vm.active_operation_id is None
    assert vm.ready_at is not None
    assert fake_host.host.guests["web1"].state is GuestState.RUNNING
    recorded = platform.runner.get(operation.id)
    assert recorded.status is OperationStatus.SUCCEEDED
    assert "interrupted" in recorded.message
    assert allocated(platform) == Allocation(1, 1024, 4 * GIB)
    # The VM is usable: it can be stopped like any other.
    run(platform, platform.vms.stop("web1"))


def test_an_interrupted_delete_is_completed(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    _vm, operation = interrupted(
        platform,
        fake_host,
        "web1",
        "vm.delete",
        vm_changes={"provisioning_state": ProvisioningState.DELETING, "power_state": PowerState.RUNNING},
    )
    report = platform.reconciler.at_start()
    assert report.operations == {operation.id: "delete completed"}
    assert fake_host.host.guests == {} and fake_host.host.instances == {}
    assert_vm_gone(platform, "web1")
    assert platform.runner.get(operation.id).status is OperationStatus.SUCCEEDED


def test_an_interrupted_stop_records_what_the_host_shows(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    _vm, operation = interrupted(
        platform,
        fake_host,
        "web1",
        "vm.stop",
        vm_changes={"provisioning_state": ProvisioningState.SUCCEEDED, "power_state": PowerState.STOPPING},
    )
    fake_host.destroy("web1")  # the guest did power off; the server died before recording it
    report = platform.reconciler.at_start()
    assert report.operations == {operation.id: "state re-read: stopped"}
    vm = platform.vms.get("web1")
    assert (vm.power_state, vm.active_operation_id) == (PowerState.STOPPED, None)
    recorded = platform.runner.get(operation.id)
    assert recorded.status is OperationStatus.FAILED and "interrupted" in recorded.message


def test_an_interrupted_deallocate_is_finished_and_its_claim_released(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    interrupted(
        platform,
        fake_host,
        "web1",
        "vm.deallocate",
        vm_changes={"provisioning_state": ProvisioningState.SUCCEEDED, "power_state": PowerState.DEALLOCATING},
    )
    fake_host.destroy("web1")
    platform.reconciler.at_start()
    vm = platform.vms.get("web1")
    assert (vm.power_state, vm.host, vm.disk_host) == (PowerState.DEALLOCATED, None, "local")
    assert "web1" not in fake_host.host.guests
    assert "web1-os.qcow2" in fake_host.host.instances
    assert allocated(platform) == Allocation(0, 0, 4 * GIB)


def test_an_interrupted_operation_on_something_else_is_marked_failed(platform: Platform) -> None:
    operation = Operation(
        id=str(uuid.uuid4()),
        kind="image.import",
        target_kind="image",
        target_name="half",
        status=OperationStatus.PENDING,
        created_at=utcnow(),
    )
    with platform.db.session() as session:
        OperationRepo(session).add(operation)
    report = platform.reconciler.at_start()
    assert report.operations == {operation.id: "marked failed"}
    assert platform.runner.get(operation.id).status is OperationStatus.FAILED


def test_finished_operations_are_left_alone(platform: Platform, fake_host: FakeDriver, image: str) -> None:
    created = run(platform, platform.vms.create("web1", "Standard_B1s", "img"))
    report = platform.reconciler.at_start()
    assert report.operations == {}
    assert platform.runner.get(created.id).status is OperationStatus.SUCCEEDED
    assert platform.vms.get("web1").power_state is PowerState.RUNNING


# --- sync ----------------------------------------------------------------------------------


def test_a_guest_that_powered_itself_off_is_recorded_stopped(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    run(platform, platform.vms.create("web1", "Standard_B1s", "img"))
    fake_host.destroy("web1")  # e.g. `poweroff` inside the guest
    report = platform.reconciler.sync()
    assert report.power_changes == {"web1": "running -> stopped"}
    assert platform.vms.get("web1").power_state is PowerState.STOPPED
    # Nothing changed since: a second pass reports nothing.
    assert platform.reconciler.sync().power_changes == {}


def test_a_guest_started_behind_flexvms_back_is_recorded_running(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    run(platform, platform.vms.create("web1", "Standard_B1s", "img"))
    run(platform, platform.vms.stop("web1"))
    fake_host.start("web1")
    report = platform.reconciler.sync()
    assert report.power_changes == {"web1": "stopped -> running"}
    assert platform.vms.get("web1").power_state is PowerState.RUNNING


def test_a_domain_flexvm_did_not_make_is_reported_and_left_alone(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    run(platform, platform.vms.create("web1", "Standard_B1s", "img"))
    accelerator = platform.hosts.get("local").accelerator
    # No flexvm metadata: the libvirt driver reports vm_id None for such a domain.
    foreign = GuestSpec("someone-elses", str(uuid.uuid4()), None, 1, 256, accelerator, ())  # type: ignore[arg-type]
    stale = GuestSpec("stale", str(uuid.uuid4()), str(uuid.uuid4()), 1, 256, accelerator, ())
    for spec in (foreign, stale):
        fake_host.define(spec)
        fake_host.start(spec.name)

    for report in (platform.reconciler.sync(), platform.reconciler.at_start()):
        assert report.unmanaged == {"local": ["someone-elses", "stale"]}
        assert report.power_changes == {}

    assert fake_host.host.guests["someone-elses"].state is GuestState.RUNNING
    assert fake_host.host.guests["stale"].state is GuestState.RUNNING
    assert [vm.name for vm in platform.vms.list()] == ["web1"]
    assert platform.hosts.detail("local").unmanaged_guests == ["someone-elses", "stale"]


def test_an_unreachable_host_makes_its_vms_unknown_until_it_answers(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    run(platform, platform.vms.create("web1", "Standard_B1s", "img"))
    fake_host.host.reachable = False
    report = platform.reconciler.sync()
    assert report.unreachable == ["local"]
    vm = platform.vms.get("web1")
    assert vm.power_state is PowerState.UNKNOWN
    assert (vm.host, vm.provisioning_state) == ("local", ProvisioningState.SUCCEEDED)  # unseen, not lost

    fake_host.host.reachable = True
    report = platform.reconciler.sync()
    assert report.unreachable == []
    assert report.power_changes == {"web1": "unknown -> running"}
    assert platform.vms.get("web1").power_state is PowerState.RUNNING


def test_a_vm_with_an_operation_running_is_not_touched_by_sync(
    platform: Platform, fake_host: FakeDriver, image: str
) -> None:
    fake_host.host.ready_delay = None
    interrupted(platform, fake_host, "web1")  # looks like a create in progress
    fake_host.destroy("web1")
    report = platform.reconciler.sync()
    assert report.power_changes == {}
    assert platform.vms.get("web1").power_state is PowerState.STARTING
