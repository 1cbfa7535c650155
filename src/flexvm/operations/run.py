"""The context a workflow runs in: named steps, recorded as they go, replayed when resumed.

A workflow is a plain function ``work(run) -> result``. Each piece of it that changes the world
is a step::

    disk = run.step("os-disk", make_overlay, undo=remove_overlay, detail="4 GiB overlay")

The first time, the step is recorded as running, its action runs, and it is recorded done with
what the action returned (its ``output``, JSON). When a server resumes the operation after a
crash, the workflow function runs again from the top: every step already done returns its
recorded output without running, and the step that was running when the server died runs again.
So actions are written check-then-act: one re-run after a crash finds what it did and goes on.
Code between steps runs on every replay; it must only read, or decide from what the steps return.

A step that fails is recorded with its error, which is raised again on replay, so a workflow that
handles the failure (a create that moves to another host) takes the same path again. When an
error leaves the workflow, the engine runs the ``undo`` of every step done, newest first.
``run.pivot()`` marks a point of no return: steps before it are kept whatever happens after.

Every record is written under the operation's lease: the write checks, in its own transaction,
that this server still owns the operation with the fencing number it was claimed with. A server
that lost the lease (it was paused past it, and another took over) cannot record anything, and
its run stops at its next step boundary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.orm import Session

from flexvm.errors import FlexvmError, OperationCanceled, WorkflowDiverged, error_from_dict
from flexvm.model.operation import Operation, OperationStatus, Step, StepStatus
from flexvm.store.db import utcnow
from flexvm.store.repositories import OperationRepo

if TYPE_CHECKING:
    from flexvm.operations.engine import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")
Undo = Callable[[Any], None]

PROGRESS_EVERY = 0.25  # seconds: progress reports in between are kept in memory, not written
CANCEL_CHECK_EVERY = 0.5  # seconds between two looks at the cancel flag from inside a long step


class Stop(BaseException):  # noqa: N818 - a signal, not an error
    """This server stops running the operation now (shutting down, lease lost, simulated crash).
    A BaseException, so no ``except Exception`` in a workflow swallows it; nothing more is written."""


class Unwind(BaseException):  # noqa: N818
    """Replaying a compensating operation reached its first unrecorded step: time to undo."""


def stamp() -> str:
    return utcnow().isoformat(timespec="milliseconds")


def _jsonable(name: str, value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"step {name!r} returned {type(value).__name__}, which cannot be recorded as JSON") from err
    return value


class Run:
    def __init__(self, engine: Engine, operation: Operation, fence: int) -> None:
        self.engine = engine
        self.db = engine.db
        self.operation = operation
        self.fence = fence
        self.params = operation.params
        self.result: dict[str, Any] = operation.result
        self.unwinding = operation.status is OperationStatus.COMPENSATING
        self._cursor = 0
        self.undos: list[tuple[int, Callable[[], None]]] = []
        self._last_progress = 0.0
        self._last_cancel_check = 0.0
        self._cancel_seen = operation.cancel_requested
        self.compensating = False  # set while undoing: a cancel has been honoured already

    @property
    def id(self) -> str:
        return self.operation.id

    # --- steps ---------------------------------------------------------------------------
    def step(
        self,
        name: str,
        action: Callable[[], T],
        *,
        undo: Undo | None = None,
        detail: str = "",
        undo_if_failed: bool = False,
    ) -> T:
        """Run ``action`` as the named step (or replay its recorded output).

        ``undo_if_failed``: the step may have done part of its work before failing (a re-run
        after a crash finds the first attempt's files), and its undo is a "remove if present"
        that is safe on any part of it: undo it even when it failed."""
        return self._step(name, detail, undo, action=action, undo_if_failed=undo_if_failed)

    def db_step(self, name: str, action: Callable[[Session], T], *, undo: Undo | None = None, detail: str = "") -> T:
        """A step whose effect is a database change: it commits in the same transaction that
        records the step done, so the change and its record cannot part (a claim, a state)."""
        return self._step(name, detail, undo, db_action=action)

    def pivot(self, name: str, detail: str = "", *, keep: int = 0) -> None:
        """A point of no return: what came before stays, even if a later step fails. The first
        ``keep`` compensations (an ``undo_mark()`` taken earlier) stay registered: a move inside
        a resize stays done, while the resize itself can still be undone."""
        self._step(name, detail, None, action=lambda: {"keep": keep}, pivot=True)

    def undo_mark(self) -> int:
        """Where the list of compensations stands now (see ``drop_undos``)."""
        return len(self.undos)

    def drop_undos(self, mark: int) -> None:
        """Forget the compensations registered since ``mark``: the workflow dealt with those
        steps itself (a create that left a dead host records what stays there, then moves on).
        Called on the same path on every replay, so a resumed run drops the same ones."""
        del self.undos[mark:]

    def _step(
        self,
        name: str,
        detail: str,
        undo: Undo | None,
        *,
        action: Callable[[], Any] | None = None,
        db_action: Callable[[Session], Any] | None = None,
        pivot: bool = False,
        undo_if_failed: bool = False,
    ) -> Any:
        index = self._cursor
        self._cursor += 1
        steps = self.operation.steps
        if index < len(steps):
            recorded = steps[index]
            if recorded.name != name:
                raise WorkflowDiverged(
                    f"operation {self.id} resumed on another path: step {index + 1} is recorded as "
                    f"{recorded.name!r}, the workflow now asks for {name!r}",
                    details={"index": index, "recorded": recorded.name, "asked": name},
                )
            if recorded.status in (StepStatus.DONE, StepStatus.UNDOING, StepStatus.UNDONE, StepStatus.UNDO_FAILED):
                self._remember(index, recorded, undo)
                return recorded.output
            if recorded.status is StepStatus.FAILED:
                if undo is not None and undo_if_failed:
                    self._remember_failed(index, recorded, undo)
                raise error_from_dict(recorded.error or {"message": f"step {name} failed"})
            # Recorded running: the server died inside it. Run it again (it checks, then acts).
            if self.unwinding:
                raise Unwind()
            self._begin_again(recorded)
        else:
            if self.unwinding:
                raise Unwind()
            recorded = self._begin(name, detail, pivot)
        self.engine.failpoint(self, name, "started")
        try:
            if db_action is not None:
                output = self._finish_in_transaction(recorded, db_action)
            else:
                assert action is not None
                output = _jsonable(name, action())
                self.engine.failpoint(self, name, "acted")
                self._finish(recorded, output)
        except Stop:
            raise
        except BaseException as err:
            self._fail(recorded, err)
            if undo is not None and undo_if_failed:
                self._remember_failed(index, recorded, undo)
            raise
        self.engine.failpoint(self, name, "done")
        self._remember(index, recorded, undo)
        return output

    def _remember(self, index: int, step: Step, undo: Undo | None) -> None:
        if step.pivot:
            del self.undos[int((step.output or {}).get("keep", 0)) :]
        elif undo is not None and step.status in (StepStatus.DONE, StepStatus.UNDOING):
            output = step.output
            self.undos.append((index, lambda: undo(output)))

    def _remember_failed(self, index: int, step: Step, undo: Undo) -> None:
        output = step.output
        self.undos.append((index, lambda: undo(output)))

    def _begin(self, name: str, detail: str, pivot: bool) -> Step:
        step = Step(name=name, status=StepStatus.RUNNING, started_at=stamp(), detail=detail, pivot=pivot)
        step.server = self.engine.server_id

        def change(op: Operation) -> None:
            op.steps.append(step)
            op.message = detail or name

        self.write(change, boundary=True)
        return step

    def _begin_again(self, step: Step) -> None:
        def change(op: Operation) -> None:
            step.attempts += 1
            step.server = self.engine.server_id
            op.message = f"{step.detail or step.name} (again, after an interruption)"

        self.write(change, boundary=True)

    def _finish(self, step: Step, output: Any) -> None:
        def change(_op: Operation) -> None:
            step.move_to(StepStatus.DONE, self.id)
            step.output, step.finished_at = output, stamp()

        self.write(change)

    def _finish_in_transaction(self, step: Step, db_action: Callable[[Session], Any]) -> Any:
        produced: list[Any] = []

        def change(_op: Operation) -> None:
            step.move_to(StepStatus.DONE, self.id)
            step.output, step.finished_at = produced[0], stamp()

        def work(session: Session) -> None:
            produced.append(_jsonable(step.name, db_action(session)))

        try:
            self.write(change, work=work)
        except BaseException:
            if step.status is StepStatus.DONE:  # the transaction rolled back: not done after all
                step.status, step.output, step.finished_at = StepStatus.RUNNING, None, None
            raise
        return produced[0]

    def _fail(self, step: Step, err: BaseException) -> None:
        error = (
            err.to_dict()
            if isinstance(err, FlexvmError)
            else {"code": "InternalError", "message": f"{type(err).__name__}: {err}", "details": {}}
        )

        def change(_op: Operation) -> None:
            step.move_to(StepStatus.FAILED, self.id)
            step.error, step.finished_at = error, stamp()

        try:
            self.write(change)
        except (FlexvmError, Stop):
            log.warning("operation %s: could not record the failure of step %s", self.id, step.name)

    # --- progress and cancel -------------------------------------------------------------
    def progress(self, percent: int, message: str) -> None:
        """Say how far along it is (written at most a few times a second)."""
        self.operation.progress = max(0, min(100, percent))
        self.operation.message = message
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.write(lambda _op: None)

    def check_canceled(self) -> None:
        """Long steps (a migration) call this as they go: it raises once a cancel was asked for."""
        if self.compensating:
            return
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_EVERY:
            self._last_cancel_check = now
            with self.db.session() as session:
                row = OperationRepo(session).row(self.id)
                self._cancel_seen = bool(row is not None and row.cancel_requested)
        if self._cancel_seen and self.engine.cancelable(self.operation.kind):
            raise OperationCanceled(f"operation {self.id} was canceled", details={"operation_id": self.id})

    # --- the fenced write ----------------------------------------------------------------
    def write(
        self,
        change: Callable[[Operation], None],
        *,
        work: Callable[[Session], None] | None = None,
        boundary: bool = False,
    ) -> None:
        """Apply ``change`` to the operation and store it, in one transaction that first checks
        this server still owns it with its fencing number. At a step boundary it also honours
        a cancel and a shutdown."""
        if self.engine.stopping(self.id):
            raise Stop()
        with self.db.session() as session:
            repo = OperationRepo(session)
            row = self._owned_row(repo)
            self._cancel_seen = bool(row.cancel_requested)
            if boundary and self._cancel_seen and self.engine.cancelable(self.operation.kind):
                raise OperationCanceled(f"operation {self.id} was canceled", details={"operation_id": self.id})
            if work is not None:
                work(session)
            change(self.operation)
            repo.write_run_state(self.operation)

    @contextmanager
    def fenced(self) -> Iterator[Session]:
        """A transaction of the workflow's own (a scale set's instance records, written between
        steps) that, like every step record, first checks this server still owns the operation:
        a server that wakes after losing it cannot change anything through it."""
        if self.engine.stopping(self.id):
            raise Stop()
        with self.db.session() as session:
            self._owned_row(OperationRepo(session))
            yield session

    def _owned_row(self, repo: OperationRepo) -> Any:
        row = repo.row(self.id, lock=True)
        if row is None or row.owner != self.engine.server_id or row.fence != self.fence:
            # Another server took it over (this one was paused past its lease, or it is
            # shutting down): it must not record, or act, any more. Not an error of the
            # operation, so nothing in the workflow may handle it: a Stop.
            owner = None if row is None else f"server {row.owner} (fence {row.fence})"
            log.warning("operation %s: lease lost to %s; this server stops running it", self.id, owner)
            self.engine.lost(self.id)
            raise Stop()
        return row
