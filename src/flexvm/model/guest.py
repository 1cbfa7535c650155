"""What crosses the driver boundary: a guest's spec going in, its facts coming out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from flexvm.model.host import Accelerator
from flexvm.model.storage import SharedStorage


class GuestState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    SHUTDOWN = "shutting-down"
    CRASHED = "crashed"
    OTHER = "other"


@dataclass(frozen=True)
class GuestDisk:
    volume: str  # volume name in the host's instance pool (or the spec's shared store)
    device: str = "disk"  # "disk" or "cdrom"
    format: str = "qcow2"
    target: str = "vda"


@dataclass(frozen=True)
class GuestNic:
    mac: str
    kind: str = "user"  # "user": NAT inside QEMU; "bridge": onto a host bridge
    source: str | None = None  # the bridge name for kind="bridge"
    # On a flexvm network: the project's isolation filter the NIC carries and the one address it
    # may send from (see model.network.Isolation).
    isolation: str | None = None
    ip: str | None = None


@dataclass(frozen=True)
class BootKernel:
    kernel_volume: str  # volume names in the host's image pool
    initrd_volume: str | None
    cmdline: str


@dataclass(frozen=True)
class GuestSpec:
    name: str
    uuid: str
    vm_id: str
    vcpus: int
    memory_mib: int
    accelerator: Accelerator
    disks: tuple[GuestDisk, ...]
    nics: tuple[GuestNic, ...] = ()
    kernel: BootKernel | None = None
    console_log: str = ""  # volume name in the instance pool the serial console is logged to
    # Ceilings for changing the guest while it runs: vCPUs up to max_vcpus, memory up to
    # max_memory_mib by hot-plugging DIMMs into memory_slots. None: fixed at vcpus/memory_mib.
    max_vcpus: int | None = None
    max_memory_mib: int | None = None
    memory_slots: int = 0
    # The shared directory its disks and console log are in; None: the host's instance pool.
    store: SharedStorage | None = None


@dataclass
class GuestInfo:
    name: str
    uuid: str
    state: GuestState
    vcpus: int
    memory_kib: int
    cpu_time_ns: int
    vm_id: str | None  # set when flexvm made the domain (read from its metadata)
    persistent: bool = True
    disks: list[str] = field(default_factory=list)
    max_vcpus: int = 0
    max_memory_kib: int = 0  # the ceiling for hot-plug
    plugged_memory_kib: int = 0  # boot memory plus hot-plugged DIMMs; memory_kib is what the balloon leaves


@dataclass
class MemoryStats:
    """What the balloon driver reports from inside the guest (None where the guest says nothing)."""

    actual_kib: int  # what the guest has now (after the balloon)
    available_kib: int | None = None  # what the guest's kernel sees as total
    unused_kib: int | None = None  # free inside the guest
    usable_kib: int | None = None  # free plus reclaimable caches

    @property
    def used_kib(self) -> int | None:
        """Memory the guest is using and would have to give up if taken away."""
        if self.available_kib is None:
            return None
        spare = self.usable_kib if self.usable_kib is not None else self.unused_kib
        return None if spare is None else max(self.available_kib - spare, 0)


@dataclass(frozen=True)
class MigrationRequest:
    dest_uri: str
    dest_address: str | None = None  # where the destination listens for migration data
    copy_storage: bool = True  # copy the instance disks (False: they are on storage both hosts share)
    max_seconds: float = 300.0  # abort (and leave the guest on the source) after this long
    max_downtime_ms: int = 300  # the pause QEMU may take at switch-over
    allow_postcopy: bool = True  # if auto-converge is not enough


@dataclass
class MigrationProgress:
    elapsed_seconds: float
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    phase: str = "copying"  # "copying", "auto-converge", "post-copy", "switching over"


@dataclass
class MigrationResult:
    total_seconds: float
    downtime_ms: float | None
    memory_bytes: int
    disk_bytes: int
    converged_by: str  # "plain", "auto-converge" or "post-copy"
