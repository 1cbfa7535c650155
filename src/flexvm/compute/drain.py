"""Emptying and evening out hosts: drain for maintenance, undrain, rebalance.

A drain puts the host in maintenance (no new placements), plans where each of its VMs goes —
largest first, availability sets respected, the plan checked as a whole on a copy of the pool —
then moves them (running ones live, stopped ones with their files), N at a time. The plan is
shown before anything happens with --dry-run: which VM goes where, in what order, how long it
should take, and which VMs cannot move and why. Rebalance moves VMs from the fullest host to the
emptiest until no host is fuller than another by more than a threshold, within a bound on moves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from flexvm.capacity.planning import take_room
from flexvm.compute.moving import MovePlan, VmMover, estimate, plan_from, plan_params
from flexvm.compute.placing import build_request, pool_snapshots
from flexvm.errors import CapacityError, Conflict, FlexvmError, InvalidInput, InvalidState, OperationCanceled
from flexvm.model.host import HostState
from flexvm.model.operation import Operation, OperationStatus
from flexvm.model.vm import PowerState, Vm
from flexvm.operations.engine import Engine
from flexvm.operations.run import Run
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

    def __init__(self, session: Any, *, strict_spread: bool = True) -> None:
        self.session = session
        self.strict_spread = strict_spread  # False for a rolling maintenance (see SetSpread.strict)
        self.snapshots = {s.host.name: s for s in pool_snapshots(session, lock=False)}
        self.planned: dict[str, str] = {}  # VM -> planned destination

    def place(self, vm: Vm, excluded: set[str], pinned: str | None = None) -> str:
        image = ImageRepo(self.session).get(vm.image)
        request = build_request(self.session, vm, image, pinned=pinned, excluded=frozenset(excluded))
        if vm.power_state is PowerState.DEALLOCATED:
            request = dataclasses.replace(request, vcpus=0, memory_mib=0)
        if request.spread is not None:
            spread = self._spread_after_plans(request.spread, vm)
            request = dataclasses.replace(request, spread=dataclasses.replace(spread, strict=self.strict_spread))
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


def plan_moves_off(
    simulation: Simulation, host: str, *, excluded: set[str], parallel: int = 1, live_only: bool = False
) -> MovesPlan:
    """Where each VM of ``host`` goes, on a simulation of the pool (several hosts drained at
    once share one, each host's VMs then counting on the room the others' took)."""
    plan = MovesPlan(host, parallel=parallel)
    vms = VmRepo(simulation.session).on_host(host)
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
        if live_only and vm.power_state is not PowerState.RUNNING:
            plan.stays[vm.name] = "stopped: it waits here for the host to come back (its disk is here)"
            continue
        try:
            dest = simulation.place(vm, excluded=excluded)
        except CapacityError as err:
            plan.stays[vm.name] = f"no other host can take it: {err.message}"
            continue
        mode = "live" if vm.power_state is PowerState.RUNNING else "cold"
        plan.moves.append(MovePlan(vm.name, host, dest, mode, estimate(vm, mode)))
    plan.estimate_seconds = _parallel_time([m.estimate_seconds for m in plan.moves], parallel)
    return plan


def _give_back(room: Any, request: Request) -> Any:
    return dataclasses.replace(
        room,
        vcpus_free=room.vcpus_free + request.vcpus,
        memory_mib_free=room.memory_mib_free + request.memory_mib,
        disk_bytes_free=room.disk_bytes_free + request.disk_bytes,
    )


class DrainService:
    def __init__(self, db: Database, engine: Engine, mover: VmMover) -> None:
        self.db = db
        self.engine = engine
        self.mover = mover
        engine.register("host.drain", self._run_moves, cancelable=True)
        engine.register("pool.rebalance", self._run_moves, cancelable=True)
        engine.register("host.return", self._run_moves, cancelable=True)

    # --- drain ---------------------------------------------------------------------------
    def plan_drain(self, host: str, parallel: int = 1) -> MovesPlan:
        _check_parallel(parallel)
        with self.db.session() as session:
            HostRepo(session).get(host)
            return self._plan_drain(session, host, parallel)

    def _plan_drain(self, session: Any, host: str, parallel: int) -> MovesPlan:
        return plan_moves_off(Simulation(session), host, excluded={host}, parallel=parallel)

    def drain(self, host: str, parallel: int = 1) -> Operation:
        """Maintenance on, then every VM that can moves; the operation lists what stayed."""
        _check_parallel(parallel)
        with self.db.session() as session:
            hosts = HostRepo(session)
            record = hosts.lock(host)
            record.set_state(HostState.MAINTENANCE, "draining")
            hosts.save(record)
            operation = self.record_drain(session, host, parallel)
        return self.engine.launch(operation)

    def record_drain(
        self, session: Any, host: str, parallel: int = 1, *, maintenance: bool = False, parent: str | None = None
    ) -> Operation:
        """Plan and record the drain of a host already in maintenance, in the caller's
        transaction (a rolling maintenance records one per host; the caller launches it).
        ``maintenance``: the host comes back, so only running VMs move (stopped ones wait there),
        and a set's members may crowd another fault domain meanwhile (SetSpread.strict)."""
        simulation = Simulation(session, strict_spread=not maintenance)
        plan = plan_moves_off(simulation, host, excluded={host}, parallel=parallel, live_only=maintenance)
        params = {**_moves_params(plan, f"draining {host}"), **({"parent": parent} if parent else {})}
        operation = self.engine.record(session, "host.drain", "host", host, params=params)
        self._hold(session, plan, operation.id)
        return operation

    def record_return(self, session: Any, host: str, vms: list[str], parent: str, parallel: int = 1) -> Operation:
        """Record the move of VMs back to the host they were drained from (Incus's ``cluster
        restore``): each still running and free goes back live; the others stay where they are,
        saying why. The host must take VMs again (it is up)."""
        plan = MovesPlan(host, parallel=parallel)
        simulation = Simulation(session, strict_spread=False)  # home is where its set had it
        records = VmRepo(session)
        for name in vms:
            vm = records.find(name)
            if vm is None:
                continue  # deleted meanwhile
            if vm.host == host:
                continue  # home already
            if vm.power_state is not PowerState.RUNNING or vm.active_operation_id is not None:
                plan.stays[name] = (
                    f"busy with operation {vm.active_operation_id}"
                    if vm.active_operation_id
                    else f"it is {vm.power_state.value}"
                )
                continue
            try:
                simulation.place(vm, excluded=set(), pinned=host)
            except CapacityError as err:
                plan.stays[name] = f"{host} cannot take it back: {err.message}"
                continue
            plan.moves.append(MovePlan(vm.name, vm.host, host, "live", estimate(vm, "live")))
        plan.estimate_seconds = _parallel_time([m.estimate_seconds for m in plan.moves], parallel)
        params = {**_moves_params(plan, f"returning VMs to {host}"), "parent": parent}
        operation = self.engine.record(session, "host.return", "host", host, params=params)
        self._hold(session, plan, operation.id)
        return operation

    def undrain(self, host: str) -> None:
        with self.db.session() as session:
            hosts = HostRepo(session)
            record = hosts.lock(host)
            if record.state is not HostState.MAINTENANCE:
                raise InvalidState(f"host {host} is not in maintenance (it is {record.state.value})")
            busy = [vm.name for vm in VmRepo(session).list() if vm.moving_to is not None and vm.host == host]
            if busy:
                raise Conflict(f"host {host} is still draining ({', '.join(busy)} moving)")
            record.set_state(HostState.UP)
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
            params = {**_moves_params(plan, "rebalancing"), "threshold": threshold}
            operation = self.engine.record(session, "pool.rebalance", "pool", "pool", params=params)
            self._hold(session, plan, operation.id)
        return self.engine.launch(operation)

    # --- running the moves ---------------------------------------------------------------
    @staticmethod
    def _hold(session: Any, plan: MovesPlan, operation_id: str) -> None:
        """Each VM to move is busy with this operation, and its destination's room held, from now."""
        vms = VmRepo(session)
        for move in plan.moves:
            vm = vms.get(move.vm)
            vm.active_operation_id, vm.moving_to = operation_id, move.destination
            vms.save(vm)

    def _run_moves(self, run: Run) -> dict[str, Any]:
        """Each move is an operation of its own (durable, resumable, cancelable on its own),
        started ``parallel`` at a time; this one waits for them and sums up."""
        moves = [plan_from(m) for m in run.params["moves"]]
        parallel, label = int(run.params.get("parallel", 1)), run.params.get("label", "moving")
        run.step("hold", lambda: None, undo=lambda _o: self._let_go(run.id), detail=f"{len(moves)} VMs held")
        done: dict[str, str] = {}
        failed: dict[str, str] = {}
        for number, first in enumerate(range(0, len(moves), parallel), start=1):
            batch = moves[first : first + parallel]
            children = self._start_batch(run, number, batch)
            for child in children.values():
                self.engine.ensure_running(child)
            outcome = self._wait_batch(run, number, children)
            for vm_name, (ok, what) in outcome.items():
                (done if ok else failed)[vm_name] = what
            run.progress(
                int(100 * (len(done) + len(failed)) / max(len(moves), 1)),
                f"{label}: {len(done)} moved, {len(failed)} failed",
            )
        result = {"moved": done, "failed": failed, "stayed": run.params.get("stays", {})}
        if failed:
            run.result.update(result)
            raise Conflict(
                f"{len(failed)} of {len(moves)} moves failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                details=result,
            )
        return result

    def _start_batch(self, run: Run, number: int, batch: list[MovePlan]) -> dict[str, str]:
        def start(session: Session) -> dict[str, str]:
            return self._start_moves(session, run.id, batch)

        detail = ", ".join(f"{m.vm} to {m.destination}" for m in batch)
        return dict(run.db_step(f"start-{number}", start, detail=detail))

    def _wait_batch(self, run: Run, number: int, children: dict[str, str]) -> dict[str, Any]:
        def wait() -> dict[str, Any]:
            return {name: list(outcome) for name, outcome in self.wait_moves(run, children).items()}

        return dict(run.step(f"wait-{number}", wait, detail="waiting for the moves"))

    def _start_moves(self, session: Session, parent: str, batch: list[MovePlan]) -> dict[str, str]:
        """Record each move as its own operation, handing it the VM this one held."""
        vms = VmRepo(session)
        children = {}
        for move in batch:
            vm = vms.get(move.vm)
            if vm.active_operation_id == parent:
                vm.active_operation_id = None
            operation = self.engine.record(
                session,
                f"vm.migrate-{move.mode}",
                "vm",
                vm.name,
                vm=vm,
                params={**plan_params(vm, move), "parent": parent},
            )
            children[vm.name] = operation.id
        return children

    def wait_moves(self, run: Run, children: dict[str, str]) -> dict[str, tuple[bool, str]]:
        """Until every child operation (a batch of moves, or a maintenance run's drains) ended;
        a cancel of this operation cancels them too."""
        canceled = False
        while True:
            ops = {name: self.engine.get(op_id) for name, op_id in children.items()}
            if all(op.status.finished for op in ops.values()):
                break
            if not canceled:
                try:
                    run.check_canceled()
                except OperationCanceled:
                    canceled = True
                    for op in ops.values():
                        if not op.status.finished and self.engine.cancelable(op.kind):
                            with contextlib.suppress(FlexvmError):
                                self.engine.cancel(op.id)
            time.sleep(0.2)
        if canceled:
            raise OperationCanceled(f"operation {run.id} was canceled", details={"operation_id": run.id})
        return {name: _outcome(op) for name, op in ops.items()}

    def _let_go(self, operation_id: str) -> None:
        """VMs this operation still held (their moves never started): free, their room let go."""
        with self.db.session() as session:
            vms = VmRepo(session)
            for vm in vms.held_by(operation_id):
                vm.moving_to = None
                vm.active_operation_id = None
                vms.save(vm)


def _moves_params(plan: MovesPlan, label: str) -> dict[str, Any]:
    return {
        "host": plan.host,
        "parallel": plan.parallel,
        "label": label,
        "moves": [
            {"vm": m.vm, "from": m.source, "to": m.destination, "mode": m.mode, "estimate_seconds": m.estimate_seconds}
            for m in plan.moves
        ],
        "stays": plan.stays,
    }


def _outcome(operation: Operation) -> tuple[bool, str]:
    if operation.status is OperationStatus.SUCCEEDED:
        result = operation.result
        downtime = result.get("downtime_ms")
        return True, f"{result.get('mode')} to {result.get('to')}" + (
            f" ({downtime} ms down)" if downtime is not None else ""
        )
    message = (operation.error or {}).get("message", operation.status.value)
    return False, f"{operation.status.value}: {message}"


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
