"""Repositories of projects, users, tokens, role assignments and the audit trail."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, not_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from flexvm.errors import AlreadyExists, NotFound
from flexvm.model.access import Assignment, AuditEvent, Project, Quotas, Role, TokenInfo, User
from flexvm.model.operation import OperationStatus
from flexvm.model.projects import DEFAULT_PROJECT, SEPARATOR
from flexvm.store.tables import (
    AuditEventRow,
    AvailabilitySetRow,
    ImageRow,
    OperationRow,
    ProjectRow,
    RoleAssignmentRow,
    ScaleSetRow,
    TokenRow,
    UserRow,
    VmRow,
)


def keys_in(column: InstrumentedAttribute[Any], project: str) -> ColumnElement[bool]:
    """SQL for "this key column names a resource of ``project``" (see model/projects.py).
    Project names hold no LIKE wildcards ('%', '_'), so the prefix needs no escaping."""
    if project == DEFAULT_PROJECT:
        return not_(column.contains(SEPARATOR))
    return column.startswith(f"{project}{SEPARATOR}")


def _project(row: ProjectRow) -> Project:
    quotas = Quotas(row.quota_vcpus, row.quota_memory_mib, row.quota_vms, row.quota_disk_bytes, row.quota_instances)
    return Project(row.name, row.description, quotas, row.created_at)


class ProjectRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> builtins.list[Project]:
        return [_project(r) for r in self.session.scalars(select(ProjectRow).order_by(ProjectRow.name))]

    def find(self, name: str) -> Project | None:
        row = self.session.get(ProjectRow, name)
        return None if row is None else _project(row)

    def get(self, name: str) -> Project:
        project = self.find(name)
        if project is None:
            raise NotFound("project", name)
        return project

    def add(self, name: str, description: str, quotas: Quotas) -> Project:
        if self.session.get(ProjectRow, name) is not None:
            raise AlreadyExists("project", name)
        row = ProjectRow(name=name, description=description, **_quota_columns(quotas))
        self.session.add(row)
        self.session.flush()
        return _project(row)

    def set_quotas(self, name: str, quotas: Quotas) -> Project:
        row = self.session.get(ProjectRow, name)
        if row is None:
            raise NotFound("project", name)
        for column, value in _quota_columns(quotas).items():
            setattr(row, column, value)
        self.session.flush()
        return _project(row)

    def delete(self, name: str) -> None:
        row = self.session.get(ProjectRow, name)
        if row is None:
            raise NotFound("project", name)
        self.session.delete(row)

    def usage(self, project: str) -> Quotas:
        """What ``project`` uses now, in the quotas' terms (see access/quotas.py for what counts)."""
        in_project = keys_in(VmRow.name, project)
        vcpus, memory = self.session.execute(
            select(func.coalesce(func.sum(VmRow.vcpus), 0), func.coalesce(func.sum(VmRow.memory_mib), 0)).where(
                in_project, VmRow.host.is_not(None)
            )
        ).one()
        vms, vm_disks = self.session.execute(
            select(func.count(VmRow.id), func.coalesce(func.sum(VmRow.disk_bytes), 0)).where(in_project)
        ).one()
        image_disks = self.session.scalar(
            select(func.coalesce(func.sum(ImageRow.virtual_size), 0)).where(_private_images_of(project))
        )
        instances = self.session.scalar(
            select(func.coalesce(func.sum(ScaleSetRow.capacity), 0)).where(keys_in(ScaleSetRow.name, project))
        )
        return Quotas(int(vcpus), int(memory), int(vms), int(vm_disks) + int(image_disks or 0), int(instances or 0))

    def holdings(self, project: str) -> dict[str, int]:
        """What ``project`` still holds, by kind (kinds it holds none of left out)."""
        unfinished = [s.value for s in OperationStatus if not s.finished]
        conditions = {
            "VMs": keys_in(VmRow.name, project),
            "scale sets": keys_in(ScaleSetRow.name, project),
            "availability sets": keys_in(AvailabilitySetRow.name, project),
            "images": _private_images_of(project),
            "running operations": and_(keys_in(OperationRow.target_name, project), OperationRow.status.in_(unfinished)),
        }
        held = {
            kind: int(self.session.scalar(select(func.count()).where(where)) or 0) for kind, where in conditions.items()
        }
        return {kind: n for kind, n in held.items() if n}


def _private_images_of(project: str) -> ColumnElement[bool]:
    return ImageRow.name.startswith(f"{project}{SEPARATOR}")  # see model.projects.image_key


def _quota_columns(quotas: Quotas) -> dict[str, int | None]:
    return {f"quota_{name}": value for name, value in quotas.items()}


class UserRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> builtins.list[User]:
        return [
            User(r.name, r.disabled, r.created_at) for r in self.session.scalars(select(UserRow).order_by(UserRow.name))
        ]

    def find(self, name: str) -> User | None:
        row = self.session.get(UserRow, name)
        return None if row is None else User(row.name, row.disabled, row.created_at)

    def get(self, name: str) -> User:
        user = self.find(name)
        if user is None:
            raise NotFound("user", name)
        return user

    def add(self, name: str) -> User:
        if self.session.get(UserRow, name) is not None:
            raise AlreadyExists("user", name)
        row = UserRow(name=name, disabled=False)
        self.session.add(row)
        self.session.flush()
        return User(row.name, row.disabled, row.created_at)

    def set_disabled(self, name: str, disabled: bool) -> User:
        row = self.session.get(UserRow, name)
        if row is None:
            raise NotFound("user", name)
        row.disabled = disabled
        return User(row.name, row.disabled, row.created_at)


def _token(row: TokenRow) -> TokenInfo:
    role = Role[row.role] if row.role else None
    return TokenInfo(
        row.id, row.user, row.name, role, row.project, row.created_at, row.expires_at, row.revoked_at, row.last_used_at
    )


class TokenRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(
        self,
        token_id: str,
        user: str,
        name: str,
        secret_sha256: str,
        *,
        role: Role | None,
        project: str | None,
        expires_at: datetime | None,
    ) -> TokenInfo:
        row = TokenRow(
            id=token_id,
            user=user,
            name=name,
            secret_sha256=secret_sha256,
            role=role.name if role else None,
            project=project,
            expires_at=expires_at,
        )
        self.session.add(row)
        self.session.flush()
        return _token(row)

    def row(self, token_id: str) -> TokenRow | None:
        return self.session.get(TokenRow, token_id)

    def find(self, token_id: str) -> TokenInfo | None:
        row = self.session.get(TokenRow, token_id)
        return None if row is None else _token(row)

    def delete_narrowed_to(self, project: str) -> None:
        self.session.execute(delete(TokenRow).where(TokenRow.project == project))

    def list(self, user: str | None = None) -> builtins.list[TokenInfo]:
        query = select(TokenRow).order_by(TokenRow.user, TokenRow.created_at, TokenRow.id)
        if user is not None:
            query = query.where(TokenRow.user == user)
        return [_token(r) for r in self.session.scalars(query)]


def _assignment(row: RoleAssignmentRow) -> Assignment:
    return Assignment(row.id, row.user, Role[row.role], row.project, row.created_at)


class RoleRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def of_user(self, user: str) -> builtins.list[Assignment]:
        query = select(RoleAssignmentRow).where(RoleAssignmentRow.user == user).order_by(RoleAssignmentRow.id)
        return [_assignment(r) for r in self.session.scalars(query)]

    def list(self, *, project: str | None = None, user: str | None = None) -> builtins.list[Assignment]:
        query = select(RoleAssignmentRow).order_by(RoleAssignmentRow.id)
        if project is not None:
            query = query.where(RoleAssignmentRow.project == project)
        if user is not None:
            query = query.where(RoleAssignmentRow.user == user)
        return [_assignment(r) for r in self.session.scalars(query)]

    def find(self, user: str, role: Role, project: str | None) -> Assignment | None:
        scope = RoleAssignmentRow.project.is_(None) if project is None else RoleAssignmentRow.project == project
        query = select(RoleAssignmentRow).where(
            and_(RoleAssignmentRow.user == user, RoleAssignmentRow.role == role.name, scope)
        )
        row = self.session.scalars(query).first()
        return None if row is None else _assignment(row)

    def add(self, user: str, role: Role, project: str | None) -> Assignment:
        row = RoleAssignmentRow(user=user, role=role.name, project=project)
        self.session.add(row)
        self.session.flush()
        return _assignment(row)

    def delete(self, assignment_id: int) -> None:
        row = self.session.get(RoleAssignmentRow, assignment_id)
        if row is not None:
            self.session.delete(row)

    def delete_in_project(self, project: str) -> None:
        self.session.execute(delete(RoleAssignmentRow).where(RoleAssignmentRow.project == project))


class AuditRepo:
    """Append and read; there is deliberately no update or delete."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, event: AuditEvent) -> None:
        values = {k: v for k, v in event.__dict__.items() if k != "id"}
        self.session.add(AuditEventRow(**values))

    def query(
        self,
        *,
        projects: builtins.list[str] | None = None,
        user: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEvent]:
        """Newest first. ``projects`` limits to those projects' events (None: all events)."""
        query = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(limit)
        if projects is not None:
            query = query.where(AuditEventRow.project.in_(projects))
        if user is not None:
            query = query.where(AuditEventRow.user == user)
        if since is not None:
            query = query.where(AuditEventRow.at >= since)
        return [
            AuditEvent(
                r.at,
                r.user,
                r.token_id,
                r.address,
                r.method,
                r.path,
                r.action,
                r.project,
                r.resource,
                r.request_id,
                r.status,
                r.outcome,
                r.detail,
                r.id,
            )
            for r in self.session.scalars(query)
        ]
