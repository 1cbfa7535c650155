"""Running operations: recorded before work starts, executed in the background, steps persisted.

A service records an operation inside the same transaction that validates the request (so a
refused request leaves no operation, and a VM cannot get two at once), then launches its work.
The work gets an ``OperationContext`` to record steps and progress; whatever it raises becomes
the operation's error, and the VM it held is released either way.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from flexvm.errors import Busy, FlexvmError, OperationTimeout
from flexvm.model.operation import Operation, OperationStatus, Step
from flexvm.model.vm import Vm
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import OperationRepo, VmRepo

log = logging.getLogger(__name__)

Work = Callable[["OperationContext"], dict[str, Any] | None]


def _stamp() -> str:
    return utcnow().isoformat(timespec="milliseconds")


class OperationContext:
    """Handed to an operation's work: records steps and progress as they happen."""

    def __init__(self, db: Database, operation: Operation) -> None:
        self.db = db
        self.operation = operation
        self.result: dict[str, Any] = {}

    def _save(self) -> None:
        with self.db.session() as session:
            OperationRepo(session).save(self.operation)

    def progress(self, percent: int, message: str) -> None:
        self.operation.progress = max(0, min(100, percent))
        self.operation.message = message
        self._save()

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[Step]:
        step = Step(name=name, status="running", started_at=_stamp(), detail=detail)
        self.operation.steps.append(step)
        self.operation.message = detail or name
        self._save()
        try:
            yield step
        except BaseException:
            step.status = "failed"
            step.finished_at = _stamp()
            self._save()
            raise
        step.status = "done"
        step.finished_at = _stamp()
        self._save()

    def done_steps(self) -> set[str]:
        return {s.name for s in self.operation.steps if s.status == "done"}


class OperationRunner:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._threads: dict[str, threading.Thread] = {}

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
        """Persist a pending operation in the caller's transaction, taking the VM's lock if given."""
        operation = Operation(
            id=str(uuid.uuid4()),
            kind=kind,
            target_kind=target_kind,
            target_name=target_name,
            status=OperationStatus.PENDING,
            created_at=utcnow(),
            params=params or {},
            message="queued",
        )
        if vm is not None:
            if vm.active_operation_id is not None:
                raise Busy("VM", vm.name, vm.active_operation_id)
            vm.active_operation_id = operation.id
            VmRepo(session).save(vm)
        OperationRepo(session).add(operation)
        return operation

    def launch(self, operation: Operation, work: Work) -> Operation:
        thread = threading.Thread(
            target=self._run, args=(operation, work), name=f"op-{operation.kind}-{operation.id[:8]}", daemon=True
        )
        self._threads[operation.id] = thread
        thread.start()
        return operation

    def _run(self, operation: Operation, work: Work) -> None:
        context = OperationContext(self.db, operation)
        operation.status = OperationStatus.RUNNING
        operation.started_at = utcnow()
        context._save()
        try:
            result = work(context) or {}
            operation.result.update(context.result)
            operation.result.update(result)
            operation.status = OperationStatus.SUCCEEDED
            operation.progress = 100
            operation.message = "done"
        except FlexvmError as err:
            operation.result.update(context.result)
            self._fail(operation, err.to_dict())
        except Exception as err:  # a bug, not an expected failure: keep the trace for the operator
            log.error("operation %s crashed:\n%s", operation.id, traceback.format_exc())
            operation.result.update(context.result)
            self._fail(operation, {"code": "InternalError", "message": f"{type(err).__name__}: {err}", "details": {}})
        finally:
            operation.finished_at = utcnow()
            self.finish(operation)
            self._threads.pop(operation.id, None)

    @staticmethod
    def _fail(operation: Operation, error: dict[str, Any]) -> None:
        operation.status = OperationStatus.FAILED
        operation.error = error
        operation.message = error["message"]

    def finish(self, operation: Operation) -> None:
        """Store the final state and release every VM the operation held (a drain holds several)."""
        with self.db.session() as session:
            OperationRepo(session).save(operation)
            vms = VmRepo(session)
            for vm in vms.held_by(operation.id):
                vm.active_operation_id = None
                vms.save(vm)

    def wait(self, operation_id: str, timeout: float) -> Operation:
        """Block until the operation finishes (used by tests and the reconciler)."""
        end = time.monotonic() + timeout
        while True:
            with self.db.session() as session:
                operation = OperationRepo(session).get(operation_id)
            if operation.status.finished:
                return operation
            if time.monotonic() > end:
                raise OperationTimeout(f"operation {operation_id} still {operation.status.value} after {timeout:.0f} s")
            time.sleep(0.1)

    def list(self, *, limit: int = 50, target: str | None = None) -> list[Operation]:
        with self.db.session() as session:
            return OperationRepo(session).list(limit=limit, target=target)

    def get(self, operation_id: str) -> Operation:
        with self.db.session() as session:
            return OperationRepo(session).get(operation_id)

    def running(self) -> builtins.list[str]:
        return list(self._threads)
