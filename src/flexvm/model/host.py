"""Hosts: machines that run guests, each one libvirt connection URI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from flexvm.model.states import StateMachine


class HostState(StrEnum):
    UP = "up"
    DOWN = "down"  # does not answer; its VMs are unknown until it does
    MAINTENANCE = "maintenance"  # takes no new VMs (drained, or being drained)
    # For failure handling (missed checks, a second opinion, a confirmed fence):
    SUSPECT = "suspect"
    FAILED = "failed"
    FENCED = "fenced"


_H = HostState
HOST_STATES = StateMachine[HostState](
    "state of host",
    {
        _H.UP: frozenset({_H.DOWN, _H.MAINTENANCE, _H.SUSPECT}),
        _H.DOWN: frozenset({_H.UP, _H.MAINTENANCE, _H.SUSPECT, _H.FAILED}),
        _H.MAINTENANCE: frozenset({_H.UP, _H.DOWN, _H.SUSPECT}),
        _H.SUSPECT: frozenset({_H.UP, _H.FAILED, _H.DOWN, _H.MAINTENANCE}),
        # An operator may fence a host that is down (no agent could) by confirming it is off.
        _H.FAILED: frozenset({_H.FENCED, _H.UP}),
        _H.FENCED: frozenset({_H.UP, _H.MAINTENANCE}),
    },
)


class FenceAgent(StrEnum):
    """What makes sure a failed host is off before its VMs run elsewhere (fencing/)."""

    NONE = "none"  # nothing can: a host that stops answering is only marked down
    LAB = "lab"  # a lab host: its daemons and guests are killed (the lab's power switch)
    IPMI = "ipmi"  # the host's management controller, through ipmitool
    MANUAL = "manual"  # an operator confirms the machine is off


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
    # Failure handling: who fences it, with what (an IPMI address and user, the lab host), and
    # since when it has missed its health checks (None: it answers).
    fence_agent: FenceAgent = FenceAgent.NONE
    fence_options: dict[str, str] = field(default_factory=dict)
    suspect_since: datetime | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name == "state" and name in self.__dict__:
            raise AttributeError("Host.state changes only through set_state")
        object.__setattr__(self, name, value)

    def set_state(self, state: HostState, reason: str = "", operation: str | None = None) -> None:
        HOST_STATES.check(self.name, self.state, state, operation)
        object.__setattr__(self, "state", state)
        self.state_reason = reason

    @property
    def capacity_cpus(self) -> int:
        return self.advertised_cpus if self.advertised_cpus is not None else self.cpus

    @property
    def capacity_memory_mib(self) -> int:
        return self.advertised_memory_mib if self.advertised_memory_mib is not None else self.memory_mib
