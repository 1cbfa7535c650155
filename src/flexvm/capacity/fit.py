"""Pure arithmetic of room on a host: effective capacity under overcommit, what is left, what fits."""

from __future__ import annotations

import math
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


def why_not(room: Room, vcpus: int, memory_mib: int, disk_bytes: int) -> str | None:
    """None if the shape fits the room; otherwise the reason, naming what is short."""
    short = []
    if vcpus > room.vcpus_free:
        short.append(f"needs {vcpus} vCPUs, {max(room.vcpus_free, 0)} free")
    if memory_mib > room.memory_mib_free:
        short.append(
            f"needs {format_bytes(memory_mib * MIB)} memory, {format_bytes(max(room.memory_mib_free, 0) * MIB)} free"
        )
    if disk_bytes > room.disk_bytes_free:
        short.append(f"needs {format_bytes(disk_bytes)} disk, {format_bytes(max(room.disk_bytes_free, 0))} free")
    return "; ".join(short) or None


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
