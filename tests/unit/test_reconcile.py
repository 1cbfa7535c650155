"""The reconciler: how the records follow what the hosts really show (interrupted operations are
the engine's: see test_resume_after_crash.py and test_crash_matrix.py).

Pins: a guest that powered itself off is recorded stopped, one started behind flexvm's back
running; domains flexvm did not make are reported and left alone; an unreachable host's VMs
become unknown, and are read back when it answers; a VM an operation holds is not touched.
"""

from __future__ import annotations

import threading
import uuid

from flexvm.drivers.fake import FakeDriver
from flexvm.model.guest import GuestSpec, GuestState
from flexvm.model.operation import Operation, OperationStatus
from flexvm.model.vm import PowerState, ProvisioningState
from flexvm.platform import Platform
from flexvm.store.repositories import VmRepo
from tests.unit.waiting import wait_done


def run(platform: Platform, operation: Operation) -> Operation:
    done = wait_done(platform, operation.id)
    assert done.status is OperationStatus.SUCCEEDED, done.error
    return done


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
    run(platform, platform.vms.create("web1", "Standard_B1s", "img"))
    gate = threading.Event()
    platform.engine.register("test.hold", lambda run: {"released": gate.wait(10)})
    with platform.db.session() as session:  # an operation holds the VM while its guest goes away
        vm = VmRepo(session).get("web1")
        operation = platform.engine.record(session, "test.hold", "vm", "web1", vm=vm)
    platform.engine.launch(operation)
    fake_host.destroy("web1")
    report = platform.reconciler.sync()
    assert report.power_changes == {}
    assert platform.vms.get("web1").power_state is PowerState.RUNNING  # the operation's to record
    gate.set()
    wait_done(platform, operation.id)
    assert platform.reconciler.sync().power_changes == {"web1": "running -> stopped"}
