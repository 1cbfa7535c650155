"""The durable workflow engine: operations recorded before they start, run as steps, resumed by
whichever server is alive, undone newest first when they fail for good.

- ``register(kind, work)``: a service names the workflow that runs each kind of operation.
- ``record(session, …)`` persists a pending operation in the caller's transaction (so a refused
  request leaves none), owned by this server under a lease; ``launch`` starts it.
- Each server renews the leases of what it runs. One whose process is gone (seen from this
  machine) or whose leases ran out (seen from anywhere) loses its operations: another server
  claims each with a compare-and-set that raises its fencing number, so exactly one wins, and
  resumes it from its recorded steps (``run.Run``). Recovery never looks at an operation's kind
  beyond finding its workflow: what was done is what the steps say.
- A workflow that raises runs the compensations of its done steps, newest first; the operation
  ends failed (or canceled) and the holds it had (VMs busy with it) are released in the same
  transaction that records the end.
- ``cancel`` asks; the run honours it at its next step boundary (a migration checks as it goes).

Figures and the choice against DBOS: docs/decisions/0001-durable-operations.md.
"""

from __future__ import annotations

import builtins
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flexvm.errors import Busy, FlexvmError, InvalidState, OperationTimeout
from flexvm.model.operation import Operation, OperationStatus, Step, StepStatus
from flexvm.model.vm import Vm
from flexvm.operations.leader import LeaderLease
from flexvm.operations.run import Run, Stop, Unwind, stamp
from flexvm.operations.servers import ServerRegistry, ServerStatus
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import OperationRepo, VmRepo
from flexvm.store.tables import OperationRow

log = logging.getLogger(__name__)

Work = Callable[[Run], dict[str, Any] | None]
ReleaseHook = Callable[[Session, str], None]  # (session, operation id): let go of what it held
Failpoint = Callable[[str, str, str], None]  # (operation kind, step name, moment)

UNFINISHED = (OperationStatus.PENDING, OperationStatus.RUNNING, OperationStatus.COMPENSATING)
STOP_GRACE = 5.0  # seconds a clean shutdown waits for runs to reach a step boundary


@dataclass(frozen=True)
class Workflow:
    kind: str
    work: Work
    cancelable: bool = False


@dataclass
class _Active:
    fence: int
    thread: threading.Thread | None = None
    stop: bool = False  # stop at the next write (shutdown, lost lease)


@dataclass
class EngineSettings:
    lease_seconds: float = 15.0
    poll_seconds: float = 1.0  # how often orphaned operations are looked for
    failpoint: Failpoint | None = None  # tests and FLEXVM_CRASH_AT: die at a named moment
    crash_at: str = ""  # "kind:step:moment" — the process kills itself there (kill -9 tests)
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(self, db: Database, settings: EngineSettings | None = None) -> None:
        self.db = db
        self.settings = settings or EngineSettings()
        self.servers = ServerRegistry(db)
        self.server_id = self.servers.id
        self.leader = LeaderLease(db, self.server_id, self.settings.lease_seconds)
        self._workflows: dict[str, Workflow] = {}
        self._release_hooks: list[ReleaseHook] = [_release_vms]
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._keeper: threading.Thread | None = None
        self._started = False

    # --- set-up --------------------------------------------------------------------------
    def register(self, kind: str, work: Work, *, cancelable: bool = False) -> None:
        self._workflows[kind] = Workflow(kind, work, cancelable)

    def on_release(self, hook: ReleaseHook) -> None:
        """Called in the transaction that ends an operation, to release what it held."""
        self._release_hooks.append(hook)

    def cancelable(self, kind: str) -> bool:
        workflow = self._workflows.get(kind)
        return workflow is not None and workflow.cancelable

    def start(self) -> builtins.list[str]:
        """Join the servers, and take up at once what dead servers left. Returns those ids."""
        self.servers.register()
        self._started = True
        dead = self._dead_servers()
        self.leader.tick(dead)
        resumed = self._claim_orphans(dead)
        self._keeper = threading.Thread(target=self._keep, name="flexvm-leases", daemon=True)
        self._keeper.start()
        return resumed

    def close(self) -> None:
        """A clean stop: runs stop at their next step boundary, and what this server held is
        released at once (fencing numbers raised), so another server resumes it without waiting."""
        if not self._started:
            return
        self._closing.set()
        if self._keeper is not None:
            self._keeper.join(timeout=10)
        with self._lock:
            for active in self._active.values():
                active.stop = True
            threads = [a.thread for a in self._active.values() if a.thread is not None]
        deadline = time.monotonic() + STOP_GRACE
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        try:
            with self.db.session() as session:
                session.execute(
                    update(OperationRow)
                    .where(
                        OperationRow.owner == self.server_id,
                        OperationRow.status.in_([s.value for s in UNFINISHED]),
                    )
                    .values(owner=None, lease_expires=0.0, fence=OperationRow.fence + 1)
                )
            self.leader.release()
            self.servers.stopped()
        except Exception:  # a database already gone must not hide the shutdown
            log.exception("could not release this server's leases at shutdown")
        self._started = False

    def abandon(self) -> None:
        """Die without a word, as ``kill -9`` would (tests): nothing more is written, runs stop
        dead at their next write, leases and the leader role are left to run out or be taken."""
        self._closing.set()
        self.servers.abandon()
        with self._lock:
            for active in self._active.values():
                active.stop = True
        self._started = False

    # --- recording and running -----------------------------------------------------------
    def record(
        self,
        session: Session,
        kind: str,
        target_kind: str,
        target_name: str,
        *,
        vm: Vm | None = None,
        params: dict[str, Any] | None = None,
    ) -> Operation:
        """Persist a pending operation in the caller's transaction, held by this server, taking
        the VM's lock if given."""
        if kind not in self._workflows:
            raise InvalidState(f"no workflow runs operations of kind {kind!r}")
        operation = Operation(
            id=str(uuid.uuid4()),
            kind=kind,
            target_kind=target_kind,
            target_name=target_name,
            status=OperationStatus.PENDING,
            created_at=utcnow(),
            params=params or {},
            message="queued",
            owner=self.server_id,
            fence=1,
            lease_expires=time.time() + self.settings.lease_seconds,
            claims=1,
        )
        if vm is not None:
            if vm.active_operation_id is not None:
                raise Busy("VM", vm.name, vm.active_operation_id)
            vm.active_operation_id = operation.id
            VmRepo(session).save(vm)
        OperationRepo(session).add(operation)
        return operation

    def launch(self, operation: Operation) -> Operation:
        """Start running an operation this server recorded (after its transaction committed)."""
        self._spawn(operation.id, operation.fence, operation.kind)
        return operation

    def ensure_running(self, operation_id: str) -> None:
        """Make sure someone runs an operation another one recorded (a drain's moves): this
        server takes it up unless it is finished, runs here already, or a live server holds it."""
        now = time.time()
        with self._lock:
            if operation_id in self._active:
                return
        with self.db.session() as session:
            row = OperationRepo(session).row(operation_id)
            if row is None or OperationStatus(row.status).finished:
                return
            fence, owner, expires, kind = row.fence or 0, row.owner, row.lease_expires or 0.0, row.kind
        if owner not in (None, self.server_id) and expires > now:
            return  # another server runs it
        if self._claim(operation_id, fence):
            self._spawn(operation_id, fence + 1, kind)

    def _spawn(self, operation_id: str, fence: int, kind: str) -> None:
        active = _Active(fence)
        thread = threading.Thread(
            target=self._drive, args=(operation_id, active), name=f"op-{kind}-{operation_id[:8]}", daemon=True
        )
        active.thread = thread
        with self._lock:
            self._active[operation_id] = active
        thread.start()

    def stopping(self, operation_id: str) -> bool:
        with self._lock:
            active = self._active.get(operation_id)
            return active is None or active.stop

    def lost(self, operation_id: str) -> None:
        with self._lock:
            active = self._active.get(operation_id)
            if active is not None:
                active.stop = True

    def failpoint(self, run: Run, step: str, moment: str) -> None:
        """A named moment of a run: tests stop the server here (in-process or with SIGKILL)."""
        kind = run.operation.kind
        if self.settings.crash_at and self.settings.crash_at == f"{kind}:{step}:{moment}":
            log.warning("FLEXVM_CRASH_AT=%s reached: killing this server", self.settings.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.settings.failpoint is not None:
            self.settings.failpoint(kind, step, moment)

    def _drive(self, operation_id: str, active: _Active) -> None:
        try:
            with self.db.session() as session:
                operation = OperationRepo(session).get(operation_id)
            run = Run(self, operation, active.fence)
            self._run(run)
        except Stop:
            log.info("operation %s: stopped on this server", operation_id)
        except Exception:  # the engine itself failed (e.g. the database went away): another server resumes
            log.exception("operation %s: the engine could not run it here", operation_id)
        finally:
            with self._lock:
                if self._active.get(operation_id) is active:
                    del self._active[operation_id]

    def _run(self, run: Run) -> None:
        operation = run.operation
        workflow = self._workflows.get(operation.kind)
        if operation.claims > 1:
            self._note_resume(run)
        if operation.status is OperationStatus.PENDING:

            def begin(op: Operation) -> None:
                op.move_to(OperationStatus.RUNNING)
                op.started_at = utcnow()

            run.write(begin)
        if workflow is None:
            error = {
                "code": "UnknownWorkflow",
                "message": f"this server has no workflow for operations of kind {operation.kind!r}",
                "details": {"kind": operation.kind},
            }
            self._compensate(run, error)
            return
        try:
            result = workflow.work(run)
        except (Stop, KeyboardInterrupt):
            raise
        except Unwind:
            self._compensate(run, operation.error or {"code": "Interrupted", "message": "interrupted", "details": {}})
            return
        except FlexvmError as err:
            self._compensate(run, operation.error if run.unwinding and operation.error else err.to_dict())
            return
        except BaseException as err:  # a bug, not an expected failure: keep the trace for the operator
            log.error("operation %s crashed:\n%s", operation.id, traceback.format_exc())
            self._compensate(run, {"code": "InternalError", "message": f"{type(err).__name__}: {err}", "details": {}})
            return
        if run.unwinding:  # it failed before; a replay that gets through changes nothing of that
            self._compensate(run, operation.error or {"code": "Interrupted", "message": "interrupted", "details": {}})
            return

        def succeed(op: Operation) -> None:
            op.result.update(result or {})
            op.move_to(OperationStatus.SUCCEEDED)
            op.progress, op.message, op.finished_at = 100, "done", utcnow()

        run.write(succeed, work=self._release_work(operation.id))

    def _note_resume(self, run: Run) -> None:
        operation = run.operation
        at = next((s.name for s in reversed(operation.steps) if s.status is not StepStatus.DONE), None)
        at = at or (operation.steps[-1].name if operation.steps else "the start")

        def note(op: Operation) -> None:
            op.result.setdefault("resumed", []).append({"server": self.server_id, "at": stamp(), "step": at})

        run.write(note)
        log.info("operation %s (%s): resumed by this server at %s", operation.id, operation.kind, at)

    def _compensate(self, run: Run, error: dict[str, Any]) -> None:
        """Undo the done steps newest first, then end failed (or canceled), releasing its holds."""
        operation = run.operation
        canceled = error.get("code") == "Canceled"
        run.compensating = True
        if operation.status is not OperationStatus.COMPENSATING:

            def enter(op: Operation) -> None:
                op.move_to(OperationStatus.COMPENSATING)
                op.error = error
                op.message = f"undoing: {error.get('message', '')}"

            run.write(enter)
        failed: list[str] = []
        for index, undo in reversed(run.undos):
            step = operation.steps[index]
            if step.status in (StepStatus.DONE, StepStatus.FAILED):
                run.write(_moving(step, StepStatus.UNDOING, operation.id))
            self.failpoint(run, step.name, "undoing")
            try:
                undo()
            except Stop:
                raise
            except Exception as err:
                message = err.message if isinstance(err, FlexvmError) else f"{type(err).__name__}: {err}"
                log.warning("operation %s: undoing step %s failed: %s", operation.id, step.name, message)
                failed.append(f"{step.name}: {message}")

                def undo_failed(_op: Operation, step: Any = step, message: str = message) -> None:
                    step.move_to(StepStatus.UNDO_FAILED, operation.id)
                    step.error = {"code": "UndoFailed", "message": message, "details": {}}

                run.write(undo_failed)
                continue
            run.write(_moving(step, StepStatus.UNDONE, operation.id))
        final = dict(error)
        if failed:
            final["details"] = {**dict(error.get("details") or {}), "undo_failed": failed}
        status = OperationStatus.CANCELED if canceled else OperationStatus.FAILED

        def end(op: Operation) -> None:
            op.move_to(status)
            op.error, op.message, op.finished_at = final, str(final.get("message", "")), utcnow()

        run.write(end, work=self._release_work(operation.id))

    def _release_work(self, operation_id: str) -> Callable[[Session], None]:
        def release(session: Session) -> None:
            for hook in self._release_hooks:
                hook(session, operation_id)

        return release

    # --- leases and takeover -------------------------------------------------------------
    def _keep(self) -> None:
        next_renewal = 0.0
        while not self._closing.wait(self.settings.poll_seconds):
            try:
                dead = self._dead_servers()
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + self.settings.lease_seconds / 3
                    self._renew()
                    self.servers.heartbeat()
                    self.leader.tick(dead)
                elif dead and not self.leader.is_leader() and self.leader.holder()[0] in dead:
                    self.leader.tick(dead)  # a leader seen dead hands its role over at once
                self._claim_orphans(dead)
            except Exception:  # the loop must outlive a database hiccup; the next pass retries
                log.exception("lease upkeep failed")

    def _renew(self) -> None:
        expires = time.time() + self.settings.lease_seconds
        with self._lock:
            held = {op_id: a.fence for op_id, a in self._active.items() if not a.stop}
        lost = []
        with self.db.session() as session:
            for op_id, fence in held.items():
                done = session.execute(
                    update(OperationRow)
                    .where(OperationRow.id == op_id, OperationRow.owner == self.server_id, OperationRow.fence == fence)
                    .values(lease_expires=expires)
                )
                if done.rowcount == 0:  # type: ignore[attr-defined]
                    lost.append(op_id)
        for op_id in lost:
            log.warning("operation %s: this server's lease was taken over", op_id)
            self.lost(op_id)

    def _dead_servers(self) -> set[str]:
        """Servers certainly gone (see ServerRegistry.dead_here), heard from recently enough to matter."""
        return self.servers.dead_here(within=max(60.0, 4 * self.settings.lease_seconds))

    def _claim_orphans(self, dead: set[str] | None = None) -> builtins.list[str]:
        """Claim every unfinished operation whose server is gone or whose lease ran out."""
        if self._closing.is_set():
            return []
        now = time.time()
        dead = self._dead_servers() if dead is None else dead
        with self.db.session() as session:
            rows = session.execute(
                select(
                    OperationRow.id,
                    OperationRow.fence,
                    OperationRow.owner,
                    OperationRow.lease_expires,
                    OperationRow.kind,
                )
                .where(OperationRow.status.in_([s.value for s in UNFINISHED]))
                .order_by(OperationRow.created_at)
            ).all()
        with self._lock:
            mine = set(self._active)
        claimed = []
        for op_id, fence, owner, expires, kind in rows:
            if op_id in mine:
                continue
            if owner is not None and owner not in dead and (expires or 0.0) > now:
                continue
            if self._claim(op_id, fence or 0):
                log.info("operation %s (%s): taken over from server %s", op_id, kind, owner)
                self._spawn(op_id, (fence or 0) + 1, kind)
                claimed.append(op_id)
        return claimed

    def _claim(self, operation_id: str, fence: int) -> bool:
        """Compare-and-set: only the server that saw this fencing number can raise it."""
        with self.db.session() as session:
            done = session.execute(
                update(OperationRow)
                .where(OperationRow.id == operation_id, OperationRow.fence == fence)
                .values(
                    owner=self.server_id,
                    fence=fence + 1,
                    lease_expires=time.time() + self.settings.lease_seconds,
                    claims=OperationRow.claims + 1,
                )
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def server_statuses(self) -> builtins.list[ServerStatus]:
        """Every server seen lately: alive or not, which one leads, what each runs now."""
        now = time.time()
        holder, _epoch, expires = self.leader.holder()
        dead = self.servers.dead_here(within=86400.0)
        with self.db.session() as session:
            rows = session.execute(
                select(OperationRow.id, OperationRow.owner).where(
                    OperationRow.status.in_([s.value for s in UNFINISHED])
                )
            ).all()
        running: dict[str, builtins.list[str]] = {}
        for op_id, owner in rows:
            running.setdefault(owner or "", []).append(op_id)
        statuses = []
        for info in self.servers.list():
            if info.stopped_at is not None:
                state = "stopped"
            elif info.id in dead:
                state = "gone"
            elif now - info.heartbeat > self.settings.lease_seconds:
                state = "silent"
            else:
                state = "up"
            leads = info.id == holder and expires > now
            statuses.append(ServerStatus(info, state, leads, sorted(running.get(info.id, []))))
        return statuses

    # --- reading, waiting, canceling -----------------------------------------------------
    def get(self, operation_id: str) -> Operation:
        with self.db.session() as session:
            return OperationRepo(session).get(operation_id)

    def list(
        self, *, limit: int = 50, target: str | None = None, project: str | None = None, with_platform: bool = False
    ) -> builtins.list[Operation]:
        with self.db.session() as session:
            return OperationRepo(session).list(limit=limit, target=target, project=project, with_platform=with_platform)

    def running(self) -> builtins.list[str]:
        with self._lock:
            return list(self._active)

    def wait(self, operation_id: str, timeout: float) -> Operation:
        """Block until the operation finishes, whichever server runs it."""
        end = time.monotonic() + timeout
        while True:
            operation = self.get(operation_id)
            if operation.status.finished:
                return operation
            if time.monotonic() > end:
                raise OperationTimeout(f"operation {operation_id} still {operation.status.value} after {timeout:.0f} s")
            time.sleep(0.05)

    def cancel(self, operation_id: str) -> Operation:
        """Ask for a cancel; the run stops at its next step boundary and undoes what it did."""
        with self.db.session() as session:
            repo = OperationRepo(session)
            operation = repo.get(operation_id)
            if operation.status.finished:
                raise InvalidState(
                    f"operation {operation_id} already finished ({operation.status.value}); there is nothing to cancel",
                    details={"operation_id": operation_id, "status": operation.status.value},
                )
            if not self.cancelable(operation.kind):
                raise InvalidState(
                    f"operation {operation_id} ({operation.kind}) cannot be canceled; only moves, drains, "
                    "rebalances, scale-set changes and maintenance runs can",
                    details={"operation_id": operation_id, "kind": operation.kind},
                )
            if operation.status is OperationStatus.COMPENSATING:
                raise InvalidState(
                    f"operation {operation_id} is already being undone",
                    details={"operation_id": operation_id, "status": operation.status.value},
                )
            row = repo.row(operation_id, lock=True)
            assert row is not None
            row.cancel_requested = True
            operation.cancel_requested = True
        return operation


def _release_vms(session: Session, operation_id: str) -> None:
    """Every VM the operation held (a drain holds several) is free again."""
    vms = VmRepo(session)
    for vm in vms.held_by(operation_id):
        vm.active_operation_id = None
        vms.save(vm)


def _moving(step: Step, status: StepStatus, operation_id: str) -> Callable[[Operation], None]:
    def change(_op: Operation) -> None:
        step.move_to(status, operation_id)

    return change
