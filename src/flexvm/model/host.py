"""Hosts: machines that run guests, each one libvirt connection URI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class HostState(StrEnum):
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"


class Accelerator(StrEnum):
    KVM = "kvm"
    TCG = "tcg"  # QEMU's own emulator: slower, but runs anywhere

    @property
    def domain_type(self) -> str:
        """libvirt's word for it in <domain type='...'>."""
        return "kvm" if self is Accelerator.KVM else "qemu"


@dataclass
class HostInfo:
    """Facts a driver reads from a host."""

    hostname: str
    cpus: int
    memory_mib: int
    cpu_model: str
    libvirt_version: str
    hypervisor_version: str
    disk_capacity_bytes: int
    disk_available_bytes: int
    kvm_offered: bool  # libvirt lists the kvm domain type; whether it really runs a guest is probed


@dataclass
class AcceleratorChoice:
    accelerator: Accelerator
    reason: str


@dataclass
class Host:
    name: str
    uri: str
    state: HostState
    cpus: int
    memory_mib: int
    disk_capacity_bytes: int
    accelerator: Accelerator
    accelerator_reason: str
    libvirt_version: str
    hypervisor_version: str
    cpu_ratio: float = 4.0
    ram_ratio: float = 1.0
    disk_ratio: float = 1.0
    reserved_memory_mib: int = 512
    fault_domain: str | None = None
    hostname: str = ""
    cpu_model: str = ""
    last_seen: datetime | None = None
    state_reason: str = ""
    # What the host offers the pool when that differs from what libvirt counts (lab hosts all
    # share one machine, so each advertises its slice).
    advertised_cpus: int | None = None
    advertised_memory_mib: int | None = None
    # Guests on this host bridge onto this flexvm network through this bridge; None: QEMU's user network.
    network: str | None = None
    bridge: str | None = None

    @property
    def capacity_cpus(self) -> int:
        return self.advertised_cpus if self.advertised_cpus is not None else self.cpus

    @property
    def capacity_memory_mib(self) -> int:
        return self.advertised_memory_mib if self.advertised_memory_mib is not None else self.memory_mib
