"""A VM as flexvm records it, and its two state machines (Azure's provisioning and power states)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from flexvm.errors import InvalidState


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

    @property
    def domain_name(self) -> str:
        return self.name

    @property
    def console_log(self) -> str:
        return f"{self.name}.console.log"

    @property
    def os_disk(self) -> Disk:
        return next(disk for disk in self.disks if disk.role == "os")
