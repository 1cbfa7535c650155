"""Capacity planning as simulation over snapshots: place a batch, or lose a host, on paper.

Pure functions: they take HostSnapshots and requests, run the real scheduler on copies whose
rooms shrink as VMs are placed, and report what happened. Nothing is claimed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from flexvm.capacity.fit import Room
from flexvm.errors import CapacityError
from flexvm.model.host import HostState
from flexvm.scheduler.placement import HostSnapshot, Request, choose


def take_room(room: Room, request: Request) -> Room:
    return dataclasses.replace(
        room,
        vcpus_free=room.vcpus_free - request.vcpus,
        memory_mib_free=room.memory_mib_free - request.memory_mib,
        disk_bytes_free=room.disk_bytes_free - request.disk_bytes,
    )


@dataclass
class BatchPlan:
    requested: int
    placed: Counter[str] = field(default_factory=Counter)  # host -> how many
    first_failure: str | None = None  # why the first VM that did not fit did not

    @property
    def fits(self) -> bool:
        return self.first_failure is None and sum(self.placed.values()) == self.requested


def plan_batch(snapshots: Sequence[HostSnapshot], request: Request, count: int, policy: str = "best-fit") -> BatchPlan:
    """Place ``count`` copies of ``request`` one by one, as that many creates would be."""
    pool = {s.host.name: s for s in snapshots}
    plan = BatchPlan(count)
    for _ in range(count):
        try:
            chosen = choose(list(pool.values()), request, policy=policy).host.name
        except CapacityError as err:
            plan.first_failure = err.message
            break
        plan.placed[chosen] += 1
        pool[chosen] = HostSnapshot(pool[chosen].host, take_room(pool[chosen].room, request))
    return plan


@dataclass
class Evacuee:
    name: str
    request: Request


@dataclass
class FailurePlan:
    lost_host: str | None
    moved: dict[str, str] = field(default_factory=dict)  # VM -> new host
    homeless: dict[str, str] = field(default_factory=dict)  # VM -> why nothing could take it

    @property
    def survives(self) -> bool:
        return not self.homeless


def busiest(snapshots: Sequence[HostSnapshot]) -> HostSnapshot | None:
    """The up host with the most memory allocated (then vCPUs): losing it hurts most."""
    up = [s for s in snapshots if s.host.state is HostState.UP]
    if not up:
        return None
    return max(
        up,
        key=lambda s: (
            s.room.memory_mib_total - s.room.memory_mib_free,
            s.room.vcpus_total - s.room.vcpus_free,
            s.host.name,
        ),
    )


def plan_failure(
    snapshots: Sequence[HostSnapshot], lost: str, evacuees: Sequence[Evacuee], policy: str = "best-fit"
) -> FailurePlan:
    """Re-place every VM of the lost host on the others, largest first (the hardest to fit)."""
    plan = FailurePlan(lost)
    pool = {s.host.name: s for s in snapshots if s.host.name != lost}
    for evacuee in sorted(evacuees, key=lambda e: (-e.request.memory_mib, -e.request.vcpus, e.name)):
        try:
            chosen = choose(list(pool.values()), evacuee.request, policy=policy).host.name
        except CapacityError as err:
            plan.homeless[evacuee.name] = err.message
            continue
        plan.moved[evacuee.name] = chosen
        pool[chosen] = HostSnapshot(pool[chosen].host, take_room(pool[chosen].room, evacuee.request))
    return plan
