"""A VM as flexvm records it, and its two state machines (Azure's provisioning and power states)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from flexvm.errors import InvalidState
from flexvm.model.states import StateMachine
from flexvm.model.storage import SharedStorage


class ProvisioningState(StrEnum):
    CREATING = "creating"
    UPDATING = "updating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DELETING = "deleting"


class PowerState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DEALLOCATING = "deallocating"
    DEALLOCATED = "deallocated"
    UNKNOWN = "unknown"  # the host does not answer; the VM is not lost, just unseen


_P = PowerState
# Every change of power state a VM may go through; anything else is a bug and raises.
POWER_STATES = StateMachine[PowerState](
    "power state of VM",
    {
        _P.STARTING: frozenset({_P.RUNNING, _P.STOPPING, _P.STOPPED, _P.DEALLOCATED, _P.UNKNOWN}),
        _P.RUNNING: frozenset({_P.STOPPING, _P.STOPPED, _P.DEALLOCATING, _P.STARTING, _P.UNKNOWN}),
        _P.STOPPING: frozenset({_P.STOPPED, _P.RUNNING, _P.STARTING, _P.DEALLOCATING, _P.UNKNOWN}),
        _P.STOPPED: frozenset({_P.STARTING, _P.RUNNING, _P.STOPPING, _P.DEALLOCATING, _P.UNKNOWN}),
        _P.DEALLOCATING: frozenset({_P.DEALLOCATED, _P.STOPPING, _P.STOPPED, _P.RUNNING, _P.UNKNOWN}),
        _P.DEALLOCATED: frozenset({_P.STARTING}),
        _P.UNKNOWN: frozenset({_P.RUNNING, _P.STOPPED, _P.STOPPING, _P.STARTING, _P.DEALLOCATING}),
    },
)

_V = ProvisioningState
PROVISIONING_STATES = StateMachine[ProvisioningState](
    "provisioning state of VM",
    {
        _V.CREATING: frozenset({_V.SUCCEEDED, _V.FAILED, _V.DELETING}),
        _V.SUCCEEDED: frozenset({_V.UPDATING, _V.FAILED, _V.DELETING}),
        _V.UPDATING: frozenset({_V.SUCCEEDED, _V.FAILED, _V.DELETING}),
        _V.FAILED: frozenset({_V.SUCCEEDED, _V.UPDATING, _V.DELETING}),
        _V.DELETING: frozenset({_V.FAILED}),
    },
)

GUARDED_FIELDS = frozenset({"power_state", "provisioning_state"})

# Which power states an action may start from. Anything else is refused with the reason.
ALLOWED_FROM: dict[str, frozenset[PowerState]] = {
    "start": frozenset({PowerState.STOPPED, PowerState.DEALLOCATED}),
    "stop": frozenset({PowerState.RUNNING, PowerState.STARTING}),
    "restart": frozenset({PowerState.RUNNING, PowerState.STARTING}),
    "deallocate": frozenset({PowerState.RUNNING, PowerState.STARTING, PowerState.STOPPED}),
    "resize-disk": frozenset({PowerState.RUNNING, PowerState.STOPPED, PowerState.DEALLOCATED}),
}


def check_action(vm_name: str, action: str, power: PowerState) -> None:
    allowed = ALLOWED_FROM[action]
    if power not in allowed:
        choices = ", ".join(sorted(state.value for state in allowed))
        raise InvalidState(
            f"cannot {action} VM '{vm_name}' while it is {power.value} (allowed from: {choices})",
            details={"power_state": power.value, "action": action},
        )


@dataclass
class Disk:
    name: str  # volume name on the host, e.g. "web1-os.qcow2"
    role: str  # "os" or "seed"
    size_bytes: int


@dataclass
class Nic:
    network: str  # "user" (NAT inside QEMU) or a bridge name
    mac: str
    ip: str | None = None


@dataclass
class Vm:
    id: str
    name: str
    size: str
    image: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    provisioning_state: ProvisioningState
    power_state: PowerState
    host: str | None  # the host holding its CPU and memory; None once deallocated
    created_at: datetime
    disk_host: str | None = None  # where its disks live, kept while deallocated
    availability_set: str | None = None
    # Ceilings for resizing while running, set at create from the size family's largest (or
    # --max-size). None on VMs made before ceilings existed: any resize then needs a restart.
    max_size: str | None = None
    max_vcpus: int | None = None
    max_memory_mib: int | None = None
    moving_to: str | None = None  # the destination of a migration in progress (room is held there too)
    ready_at: datetime | None = None
    boot_seconds: float | None = None
    user_data: str | None = None
    active_operation_id: str | None = None
    error: str | None = None
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    # Where its disks and console log live when not in its host's own pool: a shared directory
    # every host sees, so another host can run it from the same files.
    storage: SharedStorage | None = None
    # High availability: started on another host once its own is fenced (needs shared storage);
    # higher priorities first. ``unavailable`` says why a VM of a fenced host waits for it.
    ha: bool = False
    ha_priority: int = 0
    unavailable: str | None = None

    def __setattr__(self, name: str, value: object) -> None:
        # The states change only through their machines (set_power, set_provisioning), which
        # refuse a transition they do not list; the constructor sets them the first time.
        if name in GUARDED_FIELDS and name in self.__dict__:
            raise AttributeError(f"Vm.{name} changes only through set_power/set_provisioning")
        object.__setattr__(self, name, value)

    def set_power(self, state: PowerState, operation: str | None = None) -> None:
        POWER_STATES.check(self.name, self.power_state, state, operation or self.active_operation_id)
        object.__setattr__(self, "power_state", state)

    def set_provisioning(self, state: ProvisioningState, operation: str | None = None) -> None:
        PROVISIONING_STATES.check(self.name, self.provisioning_state, state, operation or self.active_operation_id)
        object.__setattr__(self, "provisioning_state", state)

    @property
    def domain_name(self) -> str:
        return self.name

    @property
    def console_log(self) -> str:
        return f"{self.name}.console.log"

    @property
    def os_disk(self) -> Disk:
        return next(disk for disk in self.disks if disk.role == "os")
