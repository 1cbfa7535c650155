"""States change only through their machines: VMs (provisioning and power), hosts, operations and
steps. A change a machine does not list raises an error naming both states and the operation, and
a plain assignment of a guarded state is refused outright."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from flexvm.errors import InvalidTransition
from flexvm.model.host import HOST_STATES, Accelerator, Host, HostState
from flexvm.model.operation import OPERATION_STATES, STEP_STATES, Operation, OperationStatus, Step, StepStatus
from flexvm.model.vm import POWER_STATES, PROVISIONING_STATES, PowerState, ProvisioningState, Vm


def vm(power: PowerState = PowerState.RUNNING) -> Vm:
    return Vm(
        id="v1",
        name="web1",
        size="Standard_B1s",
        image="img",
        vcpus=1,
        memory_mib=1024,
        disk_bytes=1,
        provisioning_state=ProvisioningState.SUCCEEDED,
        power_state=power,
        host="h1",
        created_at=datetime.now(UTC),
    )


def test_a_listed_power_change_is_made() -> None:
    machine = vm()
    machine.set_power(PowerState.STOPPING, "op-1")
    machine.set_power(PowerState.STOPPED, "op-1")
    assert machine.power_state is PowerState.STOPPED


def test_an_unlisted_power_change_names_both_states_and_the_operation() -> None:
    machine = vm(PowerState.DEALLOCATED)
    with pytest.raises(InvalidTransition) as caught:
        machine.set_power(PowerState.RUNNING, "op-7")
    message = caught.value.message
    assert "power state of VM 'web1' cannot go from deallocated to running by operation op-7" in message
    assert "(from deallocated: starting)" in message
    assert caught.value.details == {
        "subject": "web1",
        "what": "power state of VM",
        "from": "deallocated",
        "to": "running",
        "operation": "op-7",
    }
    assert machine.power_state is PowerState.DEALLOCATED  # unchanged


def test_the_operation_holding_the_vm_is_named_when_none_is_given() -> None:
    machine = dataclasses.replace(vm(PowerState.DEALLOCATED), active_operation_id="op-9")
    with pytest.raises(InvalidTransition, match="by operation op-9"):
        machine.set_power(PowerState.STOPPED)


def test_staying_in_a_state_is_always_allowed() -> None:
    """A step re-run after a crash records what it had already recorded."""
    for state in PowerState:
        assert POWER_STATES.can(state, state)
    for state in ProvisioningState:
        assert PROVISIONING_STATES.can(state, state)


def test_guarded_states_cannot_be_assigned() -> None:
    machine = vm()
    with pytest.raises(AttributeError, match="set_power/set_provisioning"):
        machine.power_state = PowerState.STOPPED  # type: ignore[misc]
    with pytest.raises(AttributeError):
        machine.provisioning_state = ProvisioningState.FAILED  # type: ignore[misc]
    copy = dataclasses.replace(machine, power_state=PowerState.STOPPED)  # a new record is built whole
    assert copy.power_state is PowerState.STOPPED


def test_a_deleting_vm_does_not_come_back() -> None:
    machine = vm()
    machine.set_provisioning(ProvisioningState.DELETING)
    with pytest.raises(InvalidTransition, match="from deleting to succeeded"):
        machine.set_provisioning(ProvisioningState.SUCCEEDED)
    machine.set_provisioning(ProvisioningState.FAILED)  # a delete that failed says so


def test_every_state_has_its_transitions_listed() -> None:
    assert set(POWER_STATES.allowed) == set(PowerState)
    assert set(PROVISIONING_STATES.allowed) == set(ProvisioningState)
    assert set(HOST_STATES.allowed) == set(HostState)
    unfinished = {s for s in OperationStatus if not s.finished}
    assert set(OPERATION_STATES.allowed) == unfinished  # a finished operation goes nowhere


def test_hosts_have_room_for_failure_states() -> None:
    host = Host("h1", "fake://h1", HostState.UP, 4, 8192, 1, Accelerator.TCG, "", "", "")
    host.set_state(HostState.SUSPECT, "missed 3 health checks")
    host.set_state(HostState.FAILED, "the lab switch cannot reach it either")
    host.set_state(HostState.FENCED, "powered off by its fence agent")
    assert (host.state, host.state_reason) == (HostState.FENCED, "powered off by its fence agent")
    with pytest.raises(InvalidTransition, match="state of host 'h1' cannot go from fenced to suspect"):
        host.set_state(HostState.SUSPECT)
    with pytest.raises(AttributeError, match="set_state"):
        host.state = HostState.UP  # type: ignore[misc]


def test_finished_operations_and_steps_stay_finished() -> None:
    operation = Operation("op-1", "vm.create", "vm", "web1", OperationStatus.RUNNING, datetime.now(UTC))
    operation.move_to(OperationStatus.SUCCEEDED)
    with pytest.raises(InvalidTransition, match="operation 'op-1' cannot go from succeeded to running"):
        operation.move_to(OperationStatus.RUNNING)
    step = Step("define", StepStatus.RUNNING, "t0")
    step.move_to(StepStatus.DONE, "op-1")
    step.move_to(StepStatus.UNDOING, "op-1")
    step.move_to(StepStatus.UNDONE, "op-1")
    with pytest.raises(InvalidTransition, match="step 'define' cannot go from undone to done"):
        step.move_to(StepStatus.DONE, "op-1")
    assert STEP_STATES.can(StepStatus.FAILED, StepStatus.UNDOING)
