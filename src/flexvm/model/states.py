"""State machines: the allowed transitions of a state, written down once, and one guard.

In the manner of qemu.qmp's ``Runstate``: a state changes only through ``StateMachine.check``,
which refuses anything not listed with an error naming what changes, both states and the
operation doing it. Staying in the same state is always allowed (a step re-run after a crash
records what it had already recorded).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Generic, TypeVar

from flexvm.errors import InvalidTransition

S = TypeVar("S", bound=StrEnum)


class StateMachine(Generic[S]):
    def __init__(self, what: str, allowed: Mapping[S, frozenset[S]]) -> None:
        self.what = what  # e.g. "power state of VM"
        self.allowed = dict(allowed)

    def can(self, current: S, new: S) -> bool:
        return new == current or new in self.allowed.get(current, frozenset())

    def check(self, subject: str, current: S, new: S, operation: str | None = None) -> None:
        if self.can(current, new):
            return
        allowed = ", ".join(sorted(s.value for s in self.allowed.get(current, frozenset()))) or "none"
        by = f" by operation {operation}" if operation else ""
        raise InvalidTransition(
            f"{self.what} '{subject}' cannot go from {current.value} to {new.value}{by} "
            f"(from {current.value}: {allowed})",
            details={
                "subject": subject,
                "what": self.what,
                "from": current.value,
                "to": new.value,
                "operation": operation,
            },
        )
