"""Emptying and evening out hosts: drain for maintenance, undrain, rebalance.

A drain puts the host in maintenance (no new placements), plans where each of its VMs goes —
largest first, availability sets respected, the plan checked as a whole on a copy of the pool —
then moves them (running ones live, stopped ones with their files), N at a time. The plan is
shown before anything happens with --dry-run: which VM goes where, in what order, how long it
should take, and which VMs cannot move and why. Rebalance moves VMs from the fullest host to the
emptiest until no host is fuller than another by more than a threshold, within a bound on moves.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flexvm.capacity.planning import take_room
from flexvm.compute.hosts import HostService
from flexvm.compute.moving import MovePlan, VmMover, estimate
from flexvm.compute.operations import OperationContext, OperationRunner
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.errors import CapacityError, Conflict, FlexvmError, InvalidInput, InvalidState
from flexvm.model.host import HostState
from flexvm.model.operation import Operation
from flexvm.model.vm import PowerState, Vm
from flexvm.scheduler.placement import HostSnapshot, Request, SetSpread, choose
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, ImageRepo, VmRepo

log = logging.getLogger(__name__)

MAX_PARALLEL = 8


@dataclass
class MovesPlan:
    host: str | None
    moves: list[MovePlan] = field(default_factory=list)  # in the order they run
    stays: dict[str, str] = field(default_factory=dict)  # VM -> why it does not move
    parallel: int = 1
    estimate_seconds: float = 0.0
    spread_before: float | None = None  # rebalance: memory use, fullest minus emptiest
    spread_after: float | None = None


class Simulation:
    """The pool on paper: rooms shrink and grow as moves are planned, set layouts follow."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.snapshots = {s.host.name: s for s in pool_snapshots(session, lock=False)}
        self.planned: dict[str, str] = {}  # VM -> planned destination

    def place(self, vm: Vm, excluded: set[str], pinned: str | None = None) -> str:
        image = ImageRepo(self.session).get(vm.image)
        request = build_request(self.session, vm, image, pinned=pinned, excluded=frozenset(excluded))
        if vm.power_state is PowerState.DEALLOCATED:
            request = dataclasses.replace(request, vcpus=0, memory_mib=0)
        if request.spread is not None:
            request = dataclasses.replace(request, spread=self._spread_after_plans(request.spread, vm))
        chosen = choose(list(self.snapshots.values()), request).host.name
        self.snapshots[chosen] = HostSnapshot(
            self.snapshots[chosen].host, take_room(self.snapshots[chosen].room, request)
        )
        source = vm.host or vm.disk_host
        if source in self.snapshots:
            self.snapshots[source] = HostSnapshot(
                self.snapshots[source].host, _give_back(self.snapshots[source].room, request)
            )
        self.planned[vm.name] = chosen
        return chosen

    def _spread_after_plans(self, spread: SetSpread, moving: Vm) -> SetSpread:
        """A set's layout once the moves planned so far have happened."""
        counts = dict(spread.members_by_domain)
        for member in VmRepo(self.session).in_set(spread.name):
            if member.name == moving.name or member.name not in self.planned:
                continue
            old = self._domain(member.host or member.disk_host)
            new = self._domain(self.planned[member.name])
            counts[old] = counts.get(old, 0) - 1
            counts[new] = counts.get(new, 0) + 1
        return dataclasses.replace(spread, members_by_domain={d: n for d, n in counts.items() if n > 0})

    def _domain(self, host: str | None) -> str:
        snapshot = self.snapshots.get(host or "")
        return snapshot.fault_domain if snapshot else (host or "")

    def memory_use(self) -> dict[str, float]:
        return {
            name: 1 - s.room.memory_mib_free / max(s.room.memory_mib_total, 1)
            for name, s in self.snapshots.items()
            if s.host.state is HostState.UP
        }


def _give_back(room: Any, request: Request) -> Any:
    return dataclasses.replace(
        room,
        vcpus_free=room.vcpus_free + request.vcpus,
        memory_mib_free=room.memory_mib_free + request.memory_mib,
        disk_bytes_free=room.disk_bytes_free + request.disk_bytes,
    )


class DrainService:
    def __init__(self, db: Database, hosts: HostService, mover: VmMover, runner: OperationRunner) -> None:
        self.db = db
        self.hosts = hosts
        self.mover = mover
        self.runner = runner

    # --- drain ---------------------------------------------------------------------------
    def plan_drain(self, host: str, parallel: int = 1) -> MovesPlan:
        _check_parallel(parallel)
        with self.db.session() as session:
            HostRepo(session).get(host)
            return self._plan_drain(session, host, parallel)

    def _plan_drain(self, session: Any, host: str, parallel: int) -> MovesPlan:
        plan = MovesPlan(host, parallel=parallel)
        simulation = Simulation(session)
        vms = VmRepo(session).on_host(host)
        # Running first (they are why a drain is live), then by size: the hardest to fit go first.
        order = sorted(vms, key=lambda v: (v.power_state is not PowerState.RUNNING, -v.memory_mib, -v.vcpus, v.name))
        for vm in order:
            if vm.active_operation_id is not None:
                plan.stays[vm.name] = f"busy with operation {vm.active_operation_id}"
                continue
            if vm.power_state not in (PowerState.RUNNING, PowerState.STOPPED, PowerState.DEALLOCATED):
                plan.stays[vm.name] = f"it is {vm.power_state.value}"
                continue
            if vm.power_state is PowerState.DEALLOCATED:
                plan.stays[vm.name] = "deallocated: it holds no CPU or memory here, only its disk"
                continue
            try:
                dest = simulation.place(vm, excluded={host})
            except CapacityError as err:
                plan.stays[vm.name] = f"no other host can take it: {err.message}"
                continue
            mode = "live" if vm.power_state is PowerState.RUNNING else "cold"
            plan.moves.append(MovePlan(vm.name, host, dest, mode, estimate(vm, mode)))
        plan.estimate_seconds = _parallel_time([m.estimate_seconds for m in plan.moves], parallel)
        return plan

    def drain(self, host: str, parallel: int = 1) -> Operation:
        """Maintenance on, then every VM that can move moves; the operation lists what stayed."""
        _check_parallel(parallel)
        with self.db.session() as session:
            hosts = HostRepo(session)
            record = hosts.lock(host)
            record.state, record.state_reason = HostState.MAINTENANCE, "draining"
            hosts.save(record)
            plan = self._plan_drain(session, host, parallel)
            operation = self.runner.record(
                session,
                "host.drain",
                "host",
                host,
                params={"parallel": parallel, "moves": len(plan.moves), "stays": plan.stays},
            )
            self._hold(session, plan, operation.id)
        return self.runner.launch(operation, lambda ctx: self._run_moves(ctx, plan, f"draining {host}"))

    def undrain(self, host: str) -> None:
        with self.db.session() as session:
            hosts = HostRepo(session)
            record = hosts.lock(host)
            if record.state is not HostState.MAINTENANCE:
                raise InvalidState(f"host {host} is not in maintenance (it is {record.state.value})")
            busy = [vm.name for vm in VmRepo(session).list() if vm.moving_to is not None and vm.host == host]
            if busy:
                raise Conflict(f"host {host} is still draining ({', '.join(busy)} moving)")
            record.state, record.state_reason = HostState.UP, ""
            hosts.save(record)

    # --- rebalance -----------------------------------------------------------------------
    def plan_rebalance(self, threshold: float = 0.25, max_moves: int = 5) -> MovesPlan:
        _check_rebalance(threshold, max_moves)
        with self.db.session() as session:
            return self._plan_rebalance(session, threshold, max_moves)

    def _plan_rebalance(self, session: Any, threshold: float, max_moves: int) -> MovesPlan:
        simulation = Simulation(session)
        plan = MovesPlan(None)
        use = simulation.memory_use()
        plan.spread_before = (max(use.values()) - min(use.values())) if len(use) > 1 else 0.0
        moved: set[str] = set()
        while len(plan.moves) < max_moves:
            use = simulation.memory_use()
            if len(use) < 2:
                break
            hottest, coolest = max(use, key=use.__getitem__), min(use, key=use.__getitem__)
            if use[hottest] - use[coolest] <= threshold:
                break
            move = self._best_move(session, simulation, hottest, coolest, moved)
            if move is None:
                plan.stays[f"host {hottest}"] = f"no VM on it can move to {coolest} and even things out"
                break
            plan.moves.append(move)
            moved.add(move.vm)
        use = simulation.memory_use()
        plan.spread_after = (max(use.values()) - min(use.values())) if len(use) > 1 else 0.0
        plan.estimate_seconds = _parallel_time([m.estimate_seconds for m in plan.moves], 1)
        return plan

    @staticmethod
    def _best_move(
        session: Any, simulation: Simulation, hottest: str, coolest: str, moved: set[str]
    ) -> MovePlan | None:
        """The running VM on the hottest host whose move to the coolest narrows the gap the most."""
        snapshots = simulation.snapshots
        total_hot = max(snapshots[hottest].room.memory_mib_total, 1)
        total_cool = max(snapshots[coolest].room.memory_mib_total, 1)
        use = simulation.memory_use()
        candidates = [
            vm
            for vm in VmRepo(session).list(host=hottest)
            if vm.power_state is PowerState.RUNNING and vm.active_operation_id is None and vm.name not in moved
        ]

        def gap_after(vm: Vm) -> float:
            return abs((use[hottest] - vm.memory_mib / total_hot) - (use[coolest] + vm.memory_mib / total_cool))

        current_gap = use[hottest] - use[coolest]
        for vm in sorted(candidates, key=gap_after):
            if gap_after(vm) >= current_gap:
                break
            try:
                dest = simulation.place(vm, excluded={hottest}, pinned=coolest)
            except CapacityError:
                continue
            return MovePlan(vm.name, hottest, dest, "live", estimate(vm, "live"))
        return None

    def rebalance(self, threshold: float = 0.25, max_moves: int = 5) -> Operation:
        _check_rebalance(threshold, max_moves)
        with self.db.session() as session:
            plan = self._plan_rebalance(session, threshold, max_moves)
            if not plan.moves:
                raise InvalidState(
                    "the pool is already balanced within the threshold; nothing to move",
                    details={"spread": plan.spread_before},
                )
            operation = self.runner.record(
                session, "pool.rebalance", "pool", "pool", params={"threshold": threshold, "moves": len(plan.moves)}
            )
            self._hold(session, plan, operation.id)
        return self.runner.launch(operation, lambda ctx: self._run_moves(ctx, plan, "rebalancing"))

    # --- running the moves ---------------------------------------------------------------
    @staticmethod
    def _hold(session: Any, plan: MovesPlan, operation_id: str) -> None:
        """Each VM to move is busy with this operation, and its destination's room held, from now."""
        vms = VmRepo(session)
        for move in plan.moves:
            vm = vms.get(move.vm)
            vm.active_operation_id, vm.moving_to = operation_id, move.destination
            vms.save(vm)

    def _run_moves(self, ctx: OperationContext, plan: MovesPlan, label: str) -> dict[str, Any]:
        done: dict[str, str] = {}
        failed: dict[str, str] = {}
        total = max(len(plan.moves), 1)

        def one(move: MovePlan) -> None:
            try:
                vm = self.mover.vms.get(move.vm)
                with self.db.session() as session:
                    image = ImageRepo(session).get(vm.image)
                result = self.mover.move(ctx, vm, image, move)
                done[move.vm] = f"{move.mode} to {move.destination}" + (
                    f" ({result.get('downtime_ms')} ms down)" if result.get("downtime_ms") is not None else ""
                )
            except FlexvmError as err:
                failed[move.vm] = err.message
                self.mover.vms.update_record(self.mover.vms.get(move.vm).id, moving_to=None)
            ctx.progress(
                int(100 * (len(done) + len(failed)) / total), f"{label}: {len(done)} moved, {len(failed)} failed"
            )

        with ThreadPoolExecutor(max_workers=plan.parallel, thread_name_prefix="move") as pool:
            list(pool.map(one, plan.moves))
        result = {"moved": done, "failed": failed, "stayed": plan.stays}
        if failed:
            ctx.result.update(result)
            raise Conflict(
                f"{len(failed)} of {len(plan.moves)} moves failed: "
                + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                details=result,
            )
        return result


def _check_rebalance(threshold: float, max_moves: int) -> None:
    if not 0.0 < threshold < 1.0:
        raise InvalidInput("threshold", f"must be between 0 and 1 (a share of memory), got {threshold}")
    if not 1 <= max_moves <= 100:
        raise InvalidInput("max_moves", f"must be between 1 and 100, got {max_moves}")


def _check_parallel(parallel: int) -> None:
    if not 1 <= parallel <= MAX_PARALLEL:
        raise InvalidInput("parallel", f"must be between 1 and {MAX_PARALLEL}, got {parallel}")


def _parallel_time(durations: list[float], parallel: int) -> float:
    """How long N-at-a-time takes: each next move starts on the lane that frees up first."""
    lanes = [0.0] * max(parallel, 1)
    for duration in durations:
        lanes[lanes.index(min(lanes))] += duration
    return max(lanes) if durations else 0.0
