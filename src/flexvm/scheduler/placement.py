"""Choose a host for a VM: filters say which hosts can take it (and why not), a weigher ranks them."""

from __future__ import annotations

from dataclasses import dataclass

from flexvm.capacity.fit import Room, never_fits, why_not
from flexvm.errors import CapacityError
from flexvm.model.host import Host, HostState
from flexvm.model.units import MIB, format_bytes


@dataclass(frozen=True)
class HostSnapshot:
    host: Host
    room: Room


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory_mib: int
    disk_bytes: int

    def describe(self) -> str:
        return f"{self.vcpus} vCPUs, {format_bytes(self.memory_mib * MIB)} memory, {format_bytes(self.disk_bytes)} disk"


def rejection(snapshot: HostSnapshot, request: Request) -> str | None:
    """Why this host cannot take the request now, or None if it can."""
    host = snapshot.host
    if host.state is not HostState.UP:
        return f"host is {host.state.value}" + (f" ({host.state_reason})" if host.state_reason else "")
    never = never_fits(snapshot.room, request.vcpus, request.memory_mib, request.disk_bytes)
    if never:
        return f"larger than this host can ever hold: {never}"
    return why_not(snapshot.room, request.vcpus, request.memory_mib, request.disk_bytes)


def best_fit_key(snapshot: HostSnapshot, request: Request) -> tuple[int, int, str]:
    """Pack: prefer the host left with the least memory (then vCPUs), keeping big sizes placeable."""
    room = snapshot.room
    return (room.memory_mib_free - request.memory_mib, room.vcpus_free - request.vcpus, snapshot.host.name)


def place(snapshots: list[HostSnapshot], request: Request) -> Host:
    """The chosen host, or CapacityError naming every host with the reason it was rejected."""
    reasons: dict[str, str] = {}
    candidates = []
    for snapshot in snapshots:
        reason = rejection(snapshot, request)
        if reason is None:
            candidates.append(snapshot)
        else:
            reasons[snapshot.host.name] = reason
    if candidates:
        return min(candidates, key=lambda s: best_fit_key(s, request)).host
    if not snapshots:
        raise CapacityError("no hosts are registered; add one with `flexvm host add`", details={"hosts": {}})
    listed = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    free = "; ".join(f"{s.host.name}: {s.room.describe_free()}" for s in snapshots)
    raise CapacityError(
        f"no host can hold {request.describe()} — {listed}. Free now: {free}",
        details={"hosts": reasons},
    )
