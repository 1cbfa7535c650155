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

    def pause(self, operation_id: str, reason: str) -> None:
        row = self._row(operation_id)
        row.pause_requested, row.paused, row.reason, row.updated_at = False, True, reason, utcnow()

    def resume(self, operation_id: str, who: str | None) -> None:
        row = self._row(operation_id)
        row.pause_requested, row.paused, row.asked_by, row.updated_at = False, False, who, utcnow()
