"""Operations: every long-running change, recorded before it starts and visible while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class OperationStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED)


@dataclass
class Step:
    """One recorded step. ``undo`` says what rolling it back means, so a restarted server can."""

    name: str
    status: str  # "running", "done", "failed", "rolled-back"
    started_at: str
    finished_at: str | None = None
    detail: str = ""


@dataclass
class Operation:
    id: str
    kind: str  # "vm.create", "vm.stop", "image.build", ...
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

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()
