"""What crosses the driver boundary: a guest's spec going in, its facts coming out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from flexvm.model.host import Accelerator


class GuestState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    SHUTDOWN = "shutting-down"
    CRASHED = "crashed"
    OTHER = "other"


@dataclass(frozen=True)
class GuestDisk:
    volume: str  # volume name in the host's instance pool
    device: str = "disk"  # "disk" or "cdrom"
    format: str = "qcow2"
    target: str = "vda"


@dataclass(frozen=True)
class GuestNic:
    mac: str
    kind: str = "user"  # "user": NAT inside QEMU; "bridge": onto a host bridge
    source: str | None = None  # the bridge name for kind="bridge"


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
