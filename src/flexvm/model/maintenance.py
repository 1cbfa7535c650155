"""Rolling maintenance: what a run's controls say, and where each of its hosts stands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class HostPhase(StrEnum):
    """One host's place in a rolling maintenance run, in the order it goes through them."""

    WAITING = "waiting"  # its turn has not come
    DRAINING = "draining"  # in maintenance, its running VMs moving away live
    UPDATING = "updating"  # the operator's hook runs
    COMING_BACK = "coming back"  # waiting for it to answer its checks again
    RETURNING = "returning"  # up again, its VMs moving back
    CHECKING = "checking"  # looking for regressions before the next host
    DONE = "done"


@dataclass
class MaintenanceControl:
    """A run's controls, beside its operation: an operator's pause asked for (taken at the next
    host), a pause in force and why (asked for, or a regression the run found)."""

    operation_id: str
    pause_requested: bool = False
    paused: bool = False
    reason: str | None = None
    asked_by: str | None = None
    updated_at: datetime | None = None
