"""Rolling maintenance runs' controls (pause asked, paused and why), one row per run."""

from __future__ import annotations

from sqlalchemy.orm import Session

from flexvm.model.maintenance import MaintenanceControl
from flexvm.store.db import utcnow
from flexvm.store.tables import MaintenanceRunRow


class MaintenanceRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, operation_id: str) -> None:
        self.session.add(MaintenanceRunRow(operation_id=operation_id, pause_requested=False, paused=False))

    def find(self, operation_id: str) -> MaintenanceControl | None:
        row = self.session.get(MaintenanceRunRow, operation_id)
        if row is None:
            return None
        return MaintenanceControl(
            row.operation_id, row.pause_requested, row.paused, row.reason, row.asked_by, row.updated_at
        )

    def _row(self, operation_id: str) -> MaintenanceRunRow:
        row = self.session.get(MaintenanceRunRow, operation_id, with_for_update=True)
        if row is None:  # every run records its row with its operation
            row = MaintenanceRunRow(operation_id=operation_id, pause_requested=False, paused=False)
            self.session.add(row)
        return row

    def ask_pause(self, operation_id: str, who: str | None) -> None:
        row = self._row(operation_id)
        row.pause_requested, row.asked_by, row.updated_at = True, who, utcnow()

    def pause(self, operation_id: str, reason: str, *, asked: bool = False) -> None:
        """Paused now, for ``reason``. ``asked``: this is the pause an operator asked for (the
        request is taken); a pause for a failure leaves a request standing for the next batch."""
        row = self._row(operation_id)
        row.paused, row.reason, row.updated_at = True, reason, utcnow()
        if asked:
            row.pause_requested = False

    def resume(self, operation_id: str, who: str | None) -> None:
        """A paused run goes on; a run only asked to pause is not asked any more."""
        row = self._row(operation_id)
        if row.paused:
            row.paused = False
        else:
            row.pause_requested = False
        row.asked_by, row.updated_at = who, utcnow()
