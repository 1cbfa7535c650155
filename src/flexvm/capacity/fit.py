"""Pure arithmetic of room on a host: effective capacity under overcommit, what is left, what fits.

What fits is one rule with one wording, used by the scheduler's filters and by every service that
checks a host itself (starting a deallocated VM, growing a disk, resizing in place): a resource is
short when more is needed than is free, and the reason says how much, or that the host could
never hold it at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from flexvm.model.host import Host
from flexvm.model.sizes import Size
from flexvm.model.units import MIB, format_bytes


@dataclass(frozen=True)
class Allocation:
    vcpus: int = 0
    memory_mib: int = 0
    disk_bytes: int = 0


@dataclass(frozen=True)
class Room:
    """What a host offers under its ratios, and what is still free of it."""

    vcpus_total: int
    memory_mib_total: int
    disk_bytes_total: int
    vcpus_free: int
    memory_mib_free: int
    disk_bytes_free: int

    def describe_free(self) -> str:
        return (
            f"{self.vcpus_free} of {self.vcpus_total} vCPUs, "
            f"{format_bytes(max(self.memory_mib_free, 0) * MIB)} of "
            f"{format_bytes(self.memory_mib_total * MIB)} memory, "
            f"{format_bytes(max(self.disk_bytes_free, 0))} of {format_bytes(self.disk_bytes_total)} disk free"
        )


def room_on(host: Host, allocated: Allocation) -> Room:
    vcpus = math.floor(host.capacity_cpus * host.cpu_ratio)
    memory = math.floor(max(host.capacity_memory_mib - host.reserved_memory_mib, 0) * host.ram_ratio)
    disk = math.floor(host.disk_capacity_bytes * host.disk_ratio)
    return Room(
        vcpus, memory, disk, vcpus - allocated.vcpus, memory - allocated.memory_mib, disk - allocated.disk_bytes
    )


def shortage(what: str, need: int, free: int, total: int, show: Callable[[int], str]) -> str | None:
    """The rule: None if ``need`` fits in what is ``free``; otherwise what is short, or that the
    host could never hold it. Needing none of a resource is never short, even on a host that is
    overcommitted (free below zero after its ratio was lowered)."""
    if need <= 0 or need <= free:
        return None
    if need > total:
        return f"larger than this host can ever hold: needs {show(need)} {what}, the host has {show(total)} in all"
    return f"needs {show(need)} {what}, {show(max(free, 0))} free"


def vcpus_short(room: Room, vcpus: int) -> str | None:
    return shortage("vCPUs", vcpus, room.vcpus_free, room.vcpus_total, str)


def memory_short(room: Room, memory_mib: int) -> str | None:
    return shortage("memory", memory_mib, room.memory_mib_free, room.memory_mib_total, _mib)


def disk_short(room: Room, disk_bytes: int) -> str | None:
    return shortage("disk", disk_bytes, room.disk_bytes_free, room.disk_bytes_total, format_bytes)


def _mib(value: int) -> str:
    return format_bytes(value * MIB)


def why_not(room: Room, vcpus: int, memory_mib: int, disk_bytes: int) -> str | None:
    """None if the shape fits the room; otherwise every shortage, in the rule's words."""
    reasons = [vcpus_short(room, vcpus), memory_short(room, memory_mib), disk_short(room, disk_bytes)]
    return "; ".join(reason for reason in reasons if reason) or None


def never_fits(room: Room, vcpus: int, memory_mib: int, disk_bytes: int) -> str | None:
    """Like why_not, against the host's whole capacity: a shape this host could never hold."""
    empty = Room(
        room.vcpus_total,
        room.memory_mib_total,
        room.disk_bytes_total,
        room.vcpus_total,
        room.memory_mib_total,
        room.disk_bytes_total,
    )
    return why_not(empty, vcpus, memory_mib, disk_bytes)


def how_many_fit(room: Room, size: Size) -> int:
    counts = [
        room.vcpus_free // size.vcpus,
        room.memory_mib_free // size.memory_mib,
        room.disk_bytes_free // size.disk_bytes,
    ]
    return max(0, min(counts))
