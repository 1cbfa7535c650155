"""Weighers: rank the hosts that passed the filters. Lower sorts first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flexvm.scheduler.snapshot import HostSnapshot, Request

Weigher = Callable[[HostSnapshot, Request], tuple[Any, ...]]


def best_fit(snapshot: HostSnapshot, request: Request) -> tuple[Any, ...]:
    """Pack: the host left with the least memory (then vCPUs) free, keeping large sizes placeable."""
    room = snapshot.room
    return (room.memory_mib_free - request.memory_mib, room.vcpus_free - request.vcpus, snapshot.host.name)


def spread(snapshot: HostSnapshot, request: Request) -> tuple[Any, ...]:
    """Spread: the host left with the most memory (then vCPUs) free, evening out load."""
    room = snapshot.room
    return (-(room.memory_mib_free - request.memory_mib), -(room.vcpus_free - request.vcpus), snapshot.host.name)


def emptiest_fault_domain_first(weigher: Weigher) -> Weigher:
    """For availability sets: fill the set's least-used fault domain first, then apply ``weigher``."""

    def weigh(snapshot: HostSnapshot, request: Request) -> tuple[Any, ...]:
        used = request.spread.members_by_domain.get(snapshot.fault_domain, 0) if request.spread else 0
        return (used, *weigher(snapshot, request))

    return weigh


WEIGHERS: dict[str, Weigher] = {"best-fit": best_fit, "spread": spread}
