"""Operations: every long-running change, recorded before it starts and visible while it runs.

An operation is a workflow of named steps, persisted as it goes (see ``flexvm.operations``). Its
status and each step's status change only through the state machines below.

    pending ──> running ──> succeeded
                   │  └───> compensating ──> failed | canceled
                   └──────> failed | canceled      (nothing to undo)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from flexvm.model.states import StateMachine


class OperationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"  # a step failed for good (or a cancel came): undoing, newest first
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED)


_OP = OperationStatus
OPERATION_STATES = StateMachine[OperationStatus](
    "operation",
    {
        _OP.PENDING: frozenset({_OP.RUNNING, _OP.COMPENSATING, _OP.FAILED, _OP.CANCELED}),
        _OP.RUNNING: frozenset({_OP.SUCCEEDED, _OP.COMPENSATING, _OP.FAILED, _OP.CANCELED}),
        _OP.COMPENSATING: frozenset({_OP.FAILED, _OP.CANCELED}),
    },
)


class StepStatus(StrEnum):
    RUNNING = "running"  # started; after a crash, re-run (steps check, then act)
    DONE = "done"
    FAILED = "failed"
    UNDOING = "undoing"  # its compensation is running
    UNDONE = "undone"  # its compensation ran
    UNDO_FAILED = "undo-failed"  # its compensation failed: what it made may be left (recorded)


_ST = StepStatus
STEP_STATES = StateMachine[StepStatus](
    "step",
    {
        _ST.RUNNING: frozenset({_ST.DONE, _ST.FAILED}),
        _ST.DONE: frozenset({_ST.UNDOING}),
        _ST.FAILED: frozenset({_ST.UNDOING}),  # a step whose undo is safe on a part of its work
        _ST.UNDOING: frozenset({_ST.UNDONE, _ST.UNDO_FAILED}),
    },
)


@dataclass
class Step:
    """One recorded step: what it did (``output``, replayed instead of re-running it once done),
    which server ran it and how many times it was started (more than once after a crash)."""

    name: str
    status: StepStatus
    started_at: str
    finished_at: str | None = None
    detail: str = ""
    output: Any = None
    error: dict[str, Any] | None = None
    server: str | None = None
    attempts: int = 1
    pivot: bool = False  # a point of no return: a later failure does not undo the steps before it

    def move_to(self, status: StepStatus, operation_id: str) -> None:
        STEP_STATES.check(self.name, self.status, status, operation_id)
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "detail": self.detail,
            "output": self.output,
            "error": self.error,
            "server": self.server,
            "attempts": self.attempts,
            "pivot": self.pivot,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        status = str(known.pop("status", "done"))
        # Records from before the engine said "rolled-back" for an undone step.
        known["status"] = StepStatus.UNDONE if status == "rolled-back" else StepStatus(status)
        return cls(**known)


@dataclass
class Operation:
    id: str
    kind: str  # "vm.create", "vm.stop", "image.build", ... : names the workflow that runs it
    target_kind: str
    target_name: str
    status: OperationStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: int = 0
    message: str = ""
    steps: list[Step] = field(default_factory=list)
    error: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    # Who runs it: the server holding its lease, until when, and the fencing number that every
    # write of that server checks (raised at each takeover, so a server that lost it cannot write).
    owner: str | None = None
    fence: int = 0
    lease_expires: float | None = None
    claims: int = 0  # how many times a server took it up (1, plus one per resume)
    cancel_requested: bool = False

    def move_to(self, status: OperationStatus) -> None:
        OPERATION_STATES.check(self.id, self.status, status, self.id)
        object.__setattr__(self, "status", status)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()
