"""Projects: made and removed by the admin, each with its quotas and what it uses of them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flexvm.access.quotas import usage
from flexvm.errors import Conflict, InvalidInput
from flexvm.model.access import QUOTA_NAMES, Project, Quotas
from flexvm.model.operation import OperationStatus
from flexvm.model.projects import DEFAULT_PROJECT, check_project
from flexvm.store.access import ProjectRepo, RoleRepo, keys_in
from flexvm.store.db import Database
from flexvm.store.tables import (
    AvailabilitySetRow,
    ImageRow,
    OperationRow,
    ScaleSetRow,
    TokenRow,
    VmRow,
)


@dataclass(frozen=True)
class ProjectView:
    project: Project
    used: Quotas


def check_quotas(quotas: Quotas) -> Quotas:
    for name, value in quotas.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InvalidInput(f"quota_{name}", f"{value!r} must be a whole number, 0 or more")
    return quotas


class ProjectService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, description: str = "", quotas: Quotas | None = None) -> Project:
        quotas = quotas or Quotas()
        check_project("name", name)
        check_quotas(quotas)
        with self.db.session() as session:
            return ProjectRepo(session).add(name, description, quotas)

    def list(self) -> list[Project]:
        with self.db.session() as session:
            return ProjectRepo(session).list()

    def exists(self, name: str) -> bool:
        with self.db.session() as session:
            return ProjectRepo(session).find(name) is not None

    def show(self, name: str) -> ProjectView:
        with self.db.session() as session:
            project = ProjectRepo(session).get(name)
            return ProjectView(project, usage(session, name))

    def set_quotas(self, name: str, changes: dict[str, int | None]) -> Project:
        """Change the named limits (None removes one); the others stay as they are."""
        for key in changes:
            if key not in QUOTA_NAMES:
                raise InvalidInput(key, f"is not a quota: use one of {', '.join(QUOTA_NAMES)}")
        with self.db.session() as session:
            repo = ProjectRepo(session)
            current = repo.get(name).quotas
            merged = check_quotas(Quotas(**{**dict(current.items()), **changes}))
            return repo.set_quotas(name, merged)

    def delete(self, name: str) -> None:
        """Refused while the project holds anything; its role assignments and tokens narrowed to
        it go with it. In one unit of work, so a create racing the delete is refused or wins."""
        if name == DEFAULT_PROJECT:
            raise Conflict("project 'default' holds what flexvm had before projects and is never deleted")
        with self.db.session() as session:
            ProjectRepo(session).get(name)
            held = _holdings(session, name)
            if held:
                listed = ", ".join(f"{count} {kind}" for kind, count in held.items())
                raise Conflict(f"project '{name}' still holds {listed}; delete them first", details={"holds": held})
            for assignment in RoleRepo(session).in_project(name):
                RoleRepo(session).delete(assignment.id)
            session.query(TokenRow).filter(TokenRow.project == name).delete()
            session.flush()
            ProjectRepo(session).delete(name)


def _holdings(session: Session, project: str) -> dict[str, int]:
    def count(column, *extra) -> int:  # type: ignore[no-untyped-def]
        return int(session.scalar(select(func.count()).where(keys_in(column, project), *extra)) or 0)

    held = {
        "VMs": count(VmRow.name),
        "scale sets": count(ScaleSetRow.name),
        "availability sets": count(AvailabilitySetRow.name),
        "images": int(session.scalar(select(func.count()).where(ImageRow.name.startswith(f"{project}."))) or 0),
        "running operations": count(
            OperationRow.target_name,
            OperationRow.status.in_([s.value for s in OperationStatus if not s.finished]),
        ),
    }
    return {kind: n for kind, n in held.items() if n}
