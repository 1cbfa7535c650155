"""A rolling maintenance run: batch by batch, drain live, run the operator's hook, wait for the
hosts to be back, take them up again, bring their VMs home, check nothing regressed.

One durable ``maintenance.run`` operation does it all; each host's drain and each return is an
operation of its own (as a drain's moves are), so ``operation list`` shows every move. For each
batch of hosts (planning.batches_of):

    go? ─▶ maintenance on ─▶ drain ─▶ update (the hook) ─▶ back (answers its checks) ─▶
    maintenance off ─▶ return (VMs move home, live) ─▶ check (what ran runs, sets at their minimum)

A drain that leaves a running VM behind or stopped, a hook that fails or outlasts its timeout, a
host not back within its time, or a regression found by the check pauses the run where it is (the
host stays drained): ``maintenance resume`` tries that part again, ``maintenance cancel`` ends
it. An operator's ``maintenance pause`` is taken before the next batch begins. Everything the run
decides comes from the outputs of its steps, so a server that resumes it after a crash goes the
same way; the step that was running (a hook, a wait) runs again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from flexvm.compute.drain import DrainService
from flexvm.compute.hosts import HostService
from flexvm.config import Settings
from flexvm.errors import Conflict, FlexvmError, InvalidInput, InvalidState, NotFound
from flexvm.maintenance.hooks import HookResult, run_hook
from flexvm.maintenance.planning import (
    MOVES_AT_ONCE,
    SETTLE_CHECKS,
    MaintenancePlan,
    choose_hosts,
    plan_maintenance,
    set_minimum,
)
from flexvm.model.host import HostState
from flexvm.model.maintenance import HostPhase, MaintenanceControl
from flexvm.model.operation import Operation, OperationStatus
from flexvm.model.vm import PowerState
from flexvm.operations.engine import UNFINISHED, Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database, utcnow
from flexvm.store.maintenance import MaintenanceRepo
from flexvm.store.repositories import HostRepo, OperationRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo

log = logging.getLogger(__name__)

KIND = "maintenance.run"
TARGET = "maintenance"
MAX_HOOK = 4096  # characters of a hook command
MAX_SECONDS = 86400.0
PAUSE_POLL = 0.5
UNSURE = (PowerState.UNKNOWN, PowerState.STARTING)  # states a VM may be in for a moment, and leave
CHILD_STOP_TIMEOUT = 300.0  # seconds a canceled drain may take to undo its moves
CHECK_GRACE = 30.0  # seconds: a few health rounds, and the reconciler's look that follows them


@dataclass
class MaintenanceRequest:
    hook: str
    hosts: list[str] | None = None
    every: bool = False
    parallel: int = 1
    hook_timeout: float = 1800.0  # a package upgrade and a reboot, with room to spare
    host_timeout: float = 600.0  # from the hook's end until the host answers its checks again

    def check(self) -> None:
        if not self.hook.strip():
            raise InvalidInput("hook", "give the command that updates a host (it is run once per host)")
        if "\0" in self.hook:
            raise InvalidInput("hook", "must not contain a NUL character")
        if len(self.hook) > MAX_HOOK:
            raise InvalidInput("hook", f"at most {MAX_HOOK} characters, got {len(self.hook)}")
        for name, value in (("hook_timeout", self.hook_timeout), ("host_timeout", self.host_timeout)):
            if not 1.0 <= value <= MAX_SECONDS:
                raise InvalidInput(name, f"must be between 1 and {MAX_SECONDS:.0f} seconds, got {value}")


@dataclass
class MaintenanceStatus:
    operation: Operation
    control: MaintenanceControl
    state: str  # running, pausing (taken before the next batch), paused, canceling, or how it ended
    phases: dict[str, HostPhase] = field(default_factory=dict)


class Maintenance:
    def __init__(self, db: Database, engine: Engine, hosts: HostService, drains: DrainService, settings: Settings):
        self.db = db
        self.engine = engine
        self.hosts = hosts
        self.drains = drains
        self.settings = settings
        self.probe_interval = settings.health_seconds  # between two looks at an updated host
        self.check_grace = CHECK_GRACE  # how long a VM may go unseen before it counts as a regression
        engine.register(KIND, self._work, cancelable=True)

    # --- planning and starting -----------------------------------------------------------
    def plan(self, names: list[str] | None, every: bool, parallel: int = 1) -> MaintenancePlan:
        with self.db.session() as session:
            return self._plan(session, names, every, parallel)

    def _plan(self, session: Session, names: list[str] | None, every: bool, parallel: int) -> MaintenancePlan:
        hosts = choose_hosts(session, names, every)
        return plan_maintenance(session, hosts, parallel, self._settle_seconds(), _last_hook_seconds(session))

    def start(self, request: MaintenanceRequest) -> Operation:
        """Plan, refuse a plan that cannot run (naming every reason), else record and start it."""
        request.check()
        with self.db.session() as session:
            HostRepo(session).lock_all()  # two runs asked for at once start one after the other
            running = OperationRepo(session).list(target=TARGET, statuses=UNFINISHED)
            if running:
                raise Conflict(
                    f"maintenance run {running[0].id} is under way; one runs at a time",
                    details={"operation_id": running[0].id},
                )
            plan = self._plan(session, request.hosts, request.every, request.parallel)
            if not plan.fits:
                raise InvalidState(
                    "the maintenance cannot start: " + "; ".join(plan.blockers),
                    details={"blockers": plan.blockers},
                )
            params = {
                "hosts": plan.hosts,
                "batches": [b.hosts for b in plan.batches],
                "parallel": plan.parallel,
                "hook": request.hook,
                "hook_timeout": request.hook_timeout,
                "host_timeout": request.host_timeout,
                "estimate_seconds": plan.estimate_seconds,
            }
            operation = self.engine.record(session, KIND, "pool", TARGET, params=params)
            MaintenanceRepo(session).add(operation.id)
        return self.engine.launch(operation)

    # --- status and controls -------------------------------------------------------------
    def status(self) -> MaintenanceStatus:
        """The run under way, or else the last one."""
        with self.db.session() as session:
            runs = OperationRepo(session).list(target=TARGET, limit=20)
            runs = [op for op in runs if op.kind == KIND]
            if not runs:
                raise NotFound("maintenance run", "latest", "no maintenance run has been started")
            unfinished = [op for op in runs if not op.status.finished]
            operation = (unfinished or runs)[0]
            control = MaintenanceRepo(session).find(operation.id) or MaintenanceControl(operation.id)
        return MaintenanceStatus(operation, control, _state_of(operation, control), host_phases(operation))

    def pause(self, who: str | None) -> MaintenanceStatus:
        operation = self._unfinished()
        with self.db.session() as session:
            control = MaintenanceRepo(session).find(operation.id)
            if control is not None and control.paused:
                raise InvalidState(f"maintenance run {operation.id} is paused already: {control.reason}")
            MaintenanceRepo(session).ask_pause(operation.id, who)
        return self.status()

    def resume(self, who: str | None) -> MaintenanceStatus:
        operation = self._unfinished()
        with self.db.session() as session:
            control = MaintenanceRepo(session).find(operation.id)
            if control is None or not (control.paused or control.pause_requested):
                raise InvalidState(f"maintenance run {operation.id} is not paused; there is nothing to resume")
            MaintenanceRepo(session).resume(operation.id, who)
        return self.status()

    def cancel(self) -> MaintenanceStatus:
        self.engine.cancel(self._unfinished().id)
        return self.status()

    def _unfinished(self) -> Operation:
        with self.db.session() as session:
            running = [op for op in OperationRepo(session).list(target=TARGET, statuses=UNFINISHED) if op.kind == KIND]
        if not running:
            raise InvalidState("no maintenance run is under way")
        return running[0]

    def _settle_seconds(self) -> float:
        return SETTLE_CHECKS * self.settings.health_seconds

    # --- the run -------------------------------------------------------------------------
    def _work(self, run: Run) -> dict[str, Any]:
        batches: list[list[str]] = run.params["batches"]
        summary: dict[str, Any] = {"hooks": {}, "stayed_away": {}, "hook_seconds": []}
        for number, hosts in enumerate(batches, start=1):
            self._batch(run, number, hosts, summary)
            run.progress(int(100 * number / len(batches)), f"{number} of {len(batches)} batches done")
        run.result.update(summary)
        return summary

    def _batch(self, run: Run, number: int, hosts: list[str], summary: dict[str, Any]) -> None:
        tag = f"batch {number}"
        asked = run.step(f"{tag}: go", lambda: self._pause_asked(run.id), detail=f"next: {', '.join(hosts)}")
        if asked is not None:
            self._pause(run, f"{tag}: held", asked, asked=True)
        self._until_ok(run, f"{tag}: ready", lambda n, _prev: self._ready_attempt(run, tag, n, hosts))
        baseline = run.db_step(
            f"{tag}: maintenance on",
            lambda s: self._enter(s, run.id, hosts),
            undo=lambda _out: self._leave(run, tag, hosts),
            detail=f"{', '.join(hosts)} in maintenance",
        )
        self._until_ok(run, f"{tag}: drain", lambda n, _prev: self._drain_attempt(run, tag, n, hosts))
        updated = self._until_ok(run, f"{tag}: update", lambda n, prev: self._update_attempt(run, tag, n, hosts, prev))
        self._until_ok(run, f"{tag}: back", lambda n, prev: self._back_attempt(run, tag, n, hosts, prev))
        run.db_step(f"{tag}: maintenance off", lambda s: self._leave_in(s, hosts), detail=f"{', '.join(hosts)} up")
        returns = run.db_step(
            f"{tag}: return",
            lambda s: {
                h: self.drains.record_return(s, h, baseline["home"][h], run.id, MOVES_AT_ONCE).id for h in hosts
            },
            undo=self._stop_children,
            detail="VMs moving back home",
        )
        away = run.step(f"{tag}: returned", lambda: self._returned(run, returns), detail="VMs moving back home")
        self._until_ok(run, f"{tag}: check", lambda n, prev: self._check_attempt(run, tag, n, hosts, baseline, prev))
        for host, result in updated["hooks"].items():
            summary["hooks"][host] = result
        summary["hook_seconds"].append(max(r["seconds"] for r in updated["hooks"].values()))
        summary["stayed_away"].update(away)

    def _until_ok(self, run: Run, label: str, attempt: Callable[[int, dict[str, Any] | None], dict[str, Any]]) -> Any:
        """Try a part of the batch; while it fails, pause the run and try again on resume."""
        previous = None
        for number in itertools.count(1):
            outcome = attempt(number, previous)
            if outcome["ok"]:
                return outcome
            self._pause(run, f"{label} #{number}", outcome["why"])
            previous = outcome
        raise AssertionError("unreachable")

    def _pause(self, run: Run, name: str, reason: str, *, asked: bool = False) -> None:
        def paused(session: Session) -> dict[str, str]:
            MaintenanceRepo(session).pause(run.id, reason, asked=asked)
            return {"reason": reason}

        log.warning("maintenance run %s paused: %s", run.id, reason)
        run.db_step(f"{name}: paused", paused, detail=f"paused: {reason}")
        run.step(f"{name}: resumed", lambda: self._wait_resume(run), detail=f"paused: {reason}")

    def _wait_resume(self, run: Run) -> dict[str, Any]:
        while True:
            run.check_canceled()
            with self.db.session() as session:
                control = MaintenanceRepo(session).find(run.id)
            if control is None or not control.paused:
                return {"resumed_by": control.asked_by if control else None}
            time.sleep(PAUSE_POLL)

    def _pause_asked(self, run_id: str) -> str | None:
        with self.db.session() as session:
            control = MaintenanceRepo(session).find(run_id)
        if control is None or not control.pause_requested:
            return None
        return f"paused by {control.asked_by or 'an operator'}"

    # --- the parts of a batch ------------------------------------------------------------
    def _ready_attempt(self, run: Run, tag: str, number: int, hosts: list[str]) -> dict[str, Any]:
        """The batch's hosts are still up (one may have failed since the plan was made)."""

        def ready() -> dict[str, Any]:
            with self.db.session() as session:
                found = {name: HostRepo(session).get(name) for name in hosts}
            not_up = [
                f"host {n} is {h.state.value} ({h.state_reason})"
                for n, h in found.items()
                if h.state is not HostState.UP
            ]
            return {"ok": not not_up, "why": "; ".join(not_up)}

        return run.step(f"{tag}: ready #{number}", ready, detail=f"{', '.join(hosts)} up?")

    def _enter(self, session: Session, run_id: str, hosts: list[str]) -> dict[str, Any]:
        """Hosts in maintenance; what runs on them now is what must run at the end of the batch."""
        for name in hosts:
            record = HostRepo(session).lock(name)
            if record.state is not HostState.MAINTENANCE:
                record.set_state(HostState.MAINTENANCE, f"maintenance run {run_id}")
            HostRepo(session).save(record)
        vms = VmRepo(session).list()
        return {
            "home": {
                h: sorted(vm.name for vm in vms if vm.host == h and vm.power_state is PowerState.RUNNING) for h in hosts
            },
        }

    def _leave_in(self, session: Session, hosts: list[str]) -> None:
        for name in hosts:
            record = HostRepo(session).lock(name)
            if record.state is HostState.MAINTENANCE:  # an operator may have undrained it already
                record.set_state(HostState.UP)
                HostRepo(session).save(record)

    def _leave(self, run: Run, tag: str, hosts: list[str]) -> None:
        """Undo of "maintenance on" (the run was canceled or failed): a host whose update never
        began is up again; one whose update began stays in maintenance until an operator looks."""
        began = any(s.name.startswith(f"{tag}: update") for s in run.operation.steps)
        with self.db.session() as session:
            for name in hosts:
                record = HostRepo(session).lock(name)
                if record.state is not HostState.MAINTENANCE:
                    continue
                if began:
                    record.state_reason = f"left in maintenance: its update began in run {run.id}, which ended early"
                else:
                    record.set_state(HostState.UP)
                HostRepo(session).save(record)

    def _drain_attempt(self, run: Run, tag: str, number: int, hosts: list[str]) -> dict[str, Any]:
        def record(session: Session) -> dict[str, str]:
            return {
                h: self.drains.record_drain(session, h, MOVES_AT_ONCE, maintenance=True, parent=run.id).id
                for h in hosts
            }

        drains = run.db_step(
            f"{tag}: drain #{number}", record, undo=self._stop_children, detail=f"draining {', '.join(hosts)}"
        )
        return run.step(
            f"{tag}: drained #{number}", lambda: self._drained(run, drains), detail="running VMs moving away live"
        )

    def _drained(self, run: Run, drains: dict[str, str]) -> dict[str, Any]:
        for operation_id in drains.values():
            self.engine.ensure_running(operation_id)
        self.drains.wait_moves(run, drains)
        problems = self._patiently(run, lambda: self._left_behind(drains))
        return {"ok": not problems, "why": "; ".join(problems)}

    def _left_behind(self, drains: dict[str, str]) -> tuple[list[str], bool]:
        """What the drains did not do: a drain that failed, a VM not running after its move, a
        running VM still on its host; and whether any of it may be passing (a VM unseen)."""
        problems, unsure = [], False
        with self.db.session() as session:
            for host, operation_id in drains.items():
                operation = OperationRepo(session).get(operation_id)
                if operation.status is not OperationStatus.SUCCEEDED:
                    problems.append(f"the drain of {host} {operation.status.value}: {_message(operation)}")
                for move in operation.params.get("moves", []):
                    vm = VmRepo(session).find(move["vm"])
                    if vm is not None and vm.power_state is not PowerState.RUNNING:
                        problems.append(f"{vm.name} is {vm.power_state.value} after its move from {host}")
                        unsure = unsure or vm.power_state in UNSURE
                stays = operation.params.get("stays", {})
                for vm in VmRepo(session).list(host=host):
                    if vm.power_state is PowerState.RUNNING:
                        problems.append(f"{vm.name} still runs on {host}: {stays.get(vm.name, 'it did not move')}")
        return problems, unsure

    def _stop_children(self, children: dict[str, str]) -> None:
        """Undo of a step that recorded drains or returns (the run was canceled, or failed): those
        still running are canceled and waited for, so none moves VMs once the run has ended."""
        for operation_id in children.values():
            operation = self.engine.get(operation_id)
            if not operation.status.finished:
                with contextlib.suppress(FlexvmError):
                    self.engine.ensure_running(operation_id)
                    self.engine.cancel(operation_id)
        for operation_id in children.values():
            with contextlib.suppress(FlexvmError):
                self.engine.wait(operation_id, CHILD_STOP_TIMEOUT)

    def _patiently(self, run: Run, look: Callable[[], tuple[list[str], bool]]) -> list[str]:
        """Problems found by ``look``, looked at again while some may pass by themselves: a VM
        unseen for a moment (its host slow to answer one check while guests move onto it) is
        not a regression until it stays unseen past the grace."""
        deadline = time.monotonic() + self.check_grace
        while True:
            problems, unsure = look()
            if not unsure or time.monotonic() > deadline:
                return problems
            run.check_canceled()
            time.sleep(self.probe_interval)

    def _update_attempt(
        self, run: Run, tag: str, number: int, hosts: list[str], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        pending = hosts if previous is None else [h for h in hosts if not previous["hooks"][h]["ok"]]

        def update() -> dict[str, Any]:
            hooks = dict(previous["hooks"]) if previous else {}
            hooks.update(self._run_hooks(run, pending))
            failed = {h: r["why"] for h, r in hooks.items() if not r["ok"]}
            why = "; ".join(f"{h}: {w} (its log: {hooks[h]['log']})" for h, w in failed.items())
            return {"ok": not failed, "why": why, "hooks": hooks}

        return run.step(f"{tag}: update #{number}", update, detail=f"updating {', '.join(pending)}")

    def _run_hooks(self, run: Run, hosts: list[str]) -> dict[str, dict[str, Any]]:
        uris = {h: self.hosts.get(h).uri for h in hosts}
        log_dir = self.settings.home / "maintenance" / run.id

        def one(host: str) -> dict[str, Any]:
            try:
                result = run_hook(run.params["hook"], host, uris[host], run.id, run.params["hook_timeout"], log_dir)
            except OSError as err:  # its log or PID file could not be written: a failed update, not a crash
                result = HookResult(host, None, 0.0, "", str(log_dir), f"the hook could not run: {err}")
            log.info(
                "maintenance run %s: the hook on %s ended after %.1f s: %s",
                run.id,
                host,
                result.seconds,
                result.why or "ok",
            )
            return {**asdict(result), "ok": result.ok}

        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            return dict(zip(hosts, pool.map(one, hosts), strict=True))

    def _back_attempt(
        self, run: Run, tag: str, number: int, hosts: list[str], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        # Every host again on a later attempt: one back before the pause may have gone down since.
        pending = hosts

        def back() -> dict[str, Any]:
            late = self._wait_back(run, pending, float(run.params["host_timeout"]))
            why = "; ".join(
                f"{h} did not answer its checks within {run.params['host_timeout']:.0f} s of its update"
                + (f" ({w})" if w else "")
                for h, w in late.items()
            )
            return {"ok": not late, "why": why, "late": late}

        return run.step(f"{tag}: back #{number}", back, detail=f"waiting for {', '.join(pending)} to answer")

    def _wait_back(self, run: Run, hosts: list[str], timeout: float) -> dict[str, str]:
        """Hosts that did not answer SETTLE_CHECKS checks in a row within ``timeout``, and the
        last thing they said (a host about to reboot answers once more; three in a row it does not)."""
        deadline = time.monotonic() + timeout
        streak = dict.fromkeys(hosts, 0)
        last: dict[str, str] = {}
        while True:
            run.check_canceled()
            for name in [h for h, n in streak.items() if n < SETTLE_CHECKS]:
                mark = utcnow()
                host = self.hosts.refresh(name, timeout=self.settings.health_timeout)
                if host.last_seen is not None and host.last_seen >= mark:
                    streak[name] += 1
                else:
                    streak[name], last[name] = 0, host.state_reason
            if all(n >= SETTLE_CHECKS for n in streak.values()):
                return {}
            if time.monotonic() > deadline:
                return {h: last.get(h, "") for h, n in streak.items() if n < SETTLE_CHECKS}
            time.sleep(self.probe_interval)

    def _returned(self, run: Run, returns: dict[str, str]) -> dict[str, str]:
        """Wait for the moves home; a VM that could not go back runs where it is, saying why."""
        for operation_id in returns.values():
            self.engine.ensure_running(operation_id)
        self.drains.wait_moves(run, returns)
        away: dict[str, str] = {}
        with self.db.session() as session:
            for operation_id in returns.values():
                operation = OperationRepo(session).get(operation_id)
                away.update(operation.params.get("stays", {}))
                away.update({vm: why for vm, why in operation.result.get("failed", {}).items()})
        return away

    def _check_attempt(
        self,
        run: Run,
        tag: str,
        number: int,
        hosts: list[str],
        baseline: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The batch's VMs (those its hosts ran) run, its hosts are up, every scale set is at its
        minimum. Resuming after a regression accepts what was found: only new problems pause."""
        batch_vms = sorted({vm for names in baseline["home"].values() for vm in names})
        accepted = set(previous["problems"]) if previous else set()

        def check() -> dict[str, Any]:
            found = self._patiently(run, lambda: self._regressions(hosts, batch_vms))
            problems = [p for p in found if p not in accepted]
            return {"ok": not problems, "why": "; ".join(problems), "problems": sorted(accepted | set(problems))}

        return run.step(f"{tag}: check #{number}", check, detail="checking that what ran runs")

    def _regressions(self, hosts: list[str], running: list[str]) -> tuple[list[str], bool]:
        """What regressed, and whether any of it may be passing (a VM or host unseen for now)."""
        problems = []
        unsure = False
        with self.db.session() as session:
            for name in hosts:
                host = HostRepo(session).get(name)
                if host.state is not HostState.UP:
                    problems.append(f"host {name} is {host.state.value} ({host.state_reason})")
                    unsure = unsure or host.state in (HostState.SUSPECT, HostState.DOWN)
            for name in running:
                vm = VmRepo(session).find(name)
                if vm is not None and vm.power_state is not PowerState.RUNNING:
                    problems.append(f"{name} ran before and is {vm.power_state.value} now")
                    unsure = unsure or vm.power_state in UNSURE
            sets = ScaleSetRepo(session)
            for scale_set in sets.list():
                members = [VmRepo(session).find(i.vm_name) for i in sets.instances(scale_set.name)]
                count = sum(1 for vm in members if vm is not None and vm.power_state is PowerState.RUNNING)
                if count < set_minimum(scale_set):
                    problems.append(
                        f"scale set {scale_set.name} runs {count} instance(s), below its minimum of "
                        f"{set_minimum(scale_set)}"
                    )
        return problems, unsure


def _message(operation: Operation) -> str:
    return str((operation.error or {}).get("message", operation.message))


def _last_hook_seconds(session: Session) -> float | None:
    """The median time a batch's hook took in the last run that finished one."""
    for operation in OperationRepo(session).list(target=TARGET, limit=20):
        seconds = operation.result.get("hook_seconds") if operation.kind == KIND else None
        if seconds:
            return round(statistics.median(seconds), 1)
    return None


def _state_of(operation: Operation, control: MaintenanceControl) -> str:
    if operation.status.finished:
        return operation.status.value
    if operation.cancel_requested or operation.status is OperationStatus.COMPENSATING:
        return "canceling"
    if control.paused:
        return "paused"
    if control.pause_requested:
        return "pausing"
    return "running"


_PHASES = {
    "go": HostPhase.WAITING,
    "maintenance on": HostPhase.DRAINING,
    "held": HostPhase.WAITING,
    "ready": HostPhase.WAITING,
    "drain": HostPhase.DRAINING,
    "drained": HostPhase.DRAINING,
    "update": HostPhase.UPDATING,
    "back": HostPhase.COMING_BACK,
    "maintenance off": HostPhase.RETURNING,
    "return": HostPhase.RETURNING,
    "returned": HostPhase.RETURNING,
    "check": HostPhase.CHECKING,
}


def host_phases(operation: Operation) -> dict[str, HostPhase]:
    """Where each host of a run stands, read from the run's steps ("batch 2: update #1")."""
    batches: list[list[str]] = operation.params.get("batches", [])
    phases = {h: HostPhase.WAITING for batch in batches for h in batch}
    latest: dict[int, str] = {}
    for step in operation.steps:
        head, _, rest = step.name.partition(": ")
        if head.startswith("batch ") and head[6:].isdigit():
            latest[int(head[6:])] = re.split(r" #|: ", rest)[0]
    for number, part in latest.items():
        later = any(n > number for n in latest)
        phase = HostPhase.DONE if later or operation.status is OperationStatus.SUCCEEDED else _PHASES[part]
        for host in batches[number - 1] if number <= len(batches) else []:
            phases[host] = phase
    if operation.status is OperationStatus.SUCCEEDED:
        phases = dict.fromkeys(phases, HostPhase.DONE)
    return phases


def plan_out(plan: MaintenancePlan) -> dict[str, Any]:
    """The plan as plain data (API, CLI)."""
    out = asdict(plan)
    out["fits"] = plan.fits
    return out
