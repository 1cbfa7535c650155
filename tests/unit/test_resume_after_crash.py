"""A server killed in the middle of an operation: the next one resumes it where it stood.

The headline case of durable operations: a create interrupted while the guest boots ends with a
running VM and a succeeded operation, not a rollback — and no guest defined twice.
"""

from __future__ import annotations

from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.model.operation import OperationStatus
from flexvm.model.vm import PowerState, ProvisioningState
from tests.unit.crash_helpers import CrashPoint, finish, servers


def fake_host_of(settings: Settings) -> FakeDriver:
    return FakeDriver.for_uri(settings.local_uri)


def test_a_create_interrupted_while_the_guest_boots_ends_running(fake_settings: Settings, small_disk) -> None:  # noqa: ANN001
    with servers(fake_settings) as group:
        first = group.open(crash=CrashPoint("vm.create", "wait-ready", "started"))
        image = first.images.import_image("img", small_disk, ready_marker="flexvm: ready")
        assert finish(first, image.id).status is OperationStatus.SUCCEEDED
        operation = first.vms.create("web1", "Standard_B1s", "img")
        # The first server dies as it starts waiting for the guest; the guest boots on regardless.
        second = group.open()
        done = finish(second, operation.id)
        assert done.status is OperationStatus.SUCCEEDED, done.error
        vm = second.vms.get("web1")
        assert (vm.provisioning_state, vm.power_state) == (ProvisioningState.SUCCEEDED, PowerState.RUNNING)
        assert vm.active_operation_id is None
        host = fake_host_of(fake_settings)
        assert list(host.host.guests) == ["web1"]
        assert host.host.guests["web1"].boots == 1  # started once, not again by the resumed run
        wait = next(s for s in done.steps if s.name == "wait-ready")
        assert (wait.attempts, wait.server) == (2, second.engine.server_id)
        assert done.result["resumed"][0]["step"] == "wait-ready"
