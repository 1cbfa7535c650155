"""The audit trail: every change and every refused attempt, appended, never altered."""

from __future__ import annotations

from datetime import datetime

from flexvm.model.access import AuditEvent
from flexvm.store.access import AuditRepo
from flexvm.store.db import Database

MAX_EVENTS = 1000


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, event: AuditEvent) -> None:
        with self.db.session() as session:
            AuditRepo(session).append(event)

    def query(
        self,
        *,
        projects: list[str] | None = None,
        user: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        with self.db.session() as session:
            return AuditRepo(session).query(projects=projects, user=user, since=since, limit=min(limit, MAX_EVENTS))
