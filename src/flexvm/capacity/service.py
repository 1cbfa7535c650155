"""The capacity report the operator reads: per host and in total, and the two simulations."""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass

from flexvm.capacity.fit import how_many_fit
from flexvm.capacity.planning import BatchPlan, Evacuee, FailurePlan, busiest, plan_batch, plan_failure, take_room
from flexvm.compute.placing import pool_snapshots
from flexvm.compute.sizes import SizeService
from flexvm.errors import InvalidInput
from flexvm.model.host import Host, HostState
from flexvm.model.sizes import Size
from flexvm.scheduler.placement import HostSnapshot, Request
from flexvm.store.db import Database
from flexvm.store.repositories import VmRepo

MAX_WHAT_IF = 100_000


@dataclass
class HostCapacity:
    host: Host
    snapshot: HostSnapshot
    fits: dict[str, int]  # size name -> how many more fit right now


@dataclass
class CapacityReport:
    hosts: builtins.list[HostCapacity]
    totals_fit: dict[str, int]


@dataclass
class WhatIf:
    size: Size
    plan: BatchPlan


def parse_what_if(text: str) -> builtins.list[tuple[str, int]]:
    """'Standard_B2s=20,Standard_D2s_v5=3' -> [("Standard_B2s", 20), ("Standard_D2s_v5", 3)]"""
    wanted = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]{0,63})=(\d+)", part)
        if not match:
            raise InvalidInput("what_if", f"'{part}' is not SIZE=COUNT (e.g. Standard_B2s=20)")
        count = int(match.group(2))
        if not 1 <= count <= MAX_WHAT_IF:
            raise InvalidInput("what_if", f"count for {match.group(1)} must be between 1 and {MAX_WHAT_IF}")
        wanted.append((match.group(1), count))
    if not wanted:
        raise InvalidInput("what_if", "say what to place, e.g. Standard_B2s=20")
    return wanted


class CapacityService:
    def __init__(self, db: Database, sizes: SizeService) -> None:
        self.db = db
        self.sizes = sizes

    def _snapshots(self) -> builtins.list[HostSnapshot]:
        with self.db.session() as session:
            return pool_snapshots(session, lock=False)

    def report(self) -> CapacityReport:
        sizes = self.sizes.all()
        hosts = []
        for snapshot in self._snapshots():
            up = snapshot.host.state is HostState.UP
            fits = {s.name: how_many_fit(snapshot.room, s) if up else 0 for s in sizes}
            hosts.append(HostCapacity(snapshot.host, snapshot, fits))
        totals = {s.name: sum(h.fits[s.name] for h in hosts) for s in sizes}
        return CapacityReport(hosts, totals)

    def what_if(self, text: str, policy: str = "best-fit") -> builtins.list[WhatIf]:
        """Would this batch fit now, and where? Sizes are placed in order, each on what the
        previous ones left, as one operator's batch of creates would be."""
        wanted = [(self.sizes.get(name), count) for name, count in parse_what_if(text)]
        snapshots = self._snapshots()
        results = []
        for size, count in wanted:
            request = Request(size.vcpus, size.memory_mib, size.disk_bytes)
            plan = plan_batch(snapshots, request, count, policy)
            results.append(WhatIf(size, plan))
            snapshots = _after(snapshots, plan, request)
        return results

    def failure(self, host: str | None = None) -> tuple[FailurePlan, builtins.list[HostSnapshot]]:
        """Does the pool survive losing its busiest host (or ``host``)? Every VM running there is
        re-placed elsewhere on paper; those that fit nowhere are listed with the reason."""
        snapshots = self._snapshots()
        if host is None:
            lost = busiest(snapshots)
            if lost is None:
                return FailurePlan(None), snapshots
            host = lost.host.name
        elif host not in {s.host.name for s in snapshots}:
            raise InvalidInput("host", f"no host named '{host}'")
        with self.db.session() as session:
            running = VmRepo(session).list(host=host)
        evacuees = [Evacuee(vm.name, Request(vm.vcpus, vm.memory_mib, vm.disk_bytes)) for vm in running]
        return plan_failure(snapshots, host, evacuees), snapshots


def _after(snapshots: builtins.list[HostSnapshot], plan: BatchPlan, request: Request) -> builtins.list[HostSnapshot]:
    result = []
    for snapshot in snapshots:
        room = snapshot.room
        for _ in range(plan.placed.get(snapshot.host.name, 0)):
            room = take_room(room, request)
        result.append(HostSnapshot(snapshot.host, room))
    return result
