"""What the scheduler sees: immutable snapshots of hosts, and the request to place."""

from __future__ import annotations

from dataclasses import dataclass, field

from flexvm.capacity.fit import Room
from flexvm.model.host import Host
from flexvm.model.units import MIB, format_bytes


@dataclass(frozen=True)
class SetSpread:
    """An availability set's current layout, for spreading its next VM."""

    name: str
    fault_domains: int
    members_by_domain: dict[str, int] = field(default_factory=dict)
    # False while a fault domain is under maintenance: its members must go somewhere for a while
    # (they come back), so a domain may hold more than its share; the emptiest still comes first.
    strict: bool = True


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory_mib: int
    disk_bytes: int
    pinned: str | None = None
    excluded: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    spread: SetSpread | None = None
    network: str | None = None  # a VM that already has an address on a network must stay on it

    def describe(self) -> str:
        return f"{self.vcpus} vCPUs, {format_bytes(self.memory_mib * MIB)} memory, {format_bytes(self.disk_bytes)} disk"


@dataclass(frozen=True)
class HostSnapshot:
    host: Host
    room: Room

    @property
    def fault_domain(self) -> str:
        """A host is its own fault domain unless the operator grouped it with others."""
        return self.host.fault_domain or self.host.name

    @property
    def features(self) -> frozenset[str]:
        return frozenset({self.host.accelerator.value})
