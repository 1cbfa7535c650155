"""Who may do what: roles, the rights they carry, and the caller a request is made by.

Four roles, as Azure names them, each holding the rights of the one below it::

    Owner         everything in its scope, and who else may act there (roles, the audit trail)
    Contributor   create, change and delete resources
    VM Operator   power actions and the console of existing VMs
    Reader        see, nothing more

A role is held on one project or on the whole platform; a platform role counts in every project.
The platform itself (hosts, the lab, sizes, networks' physical side, images from server paths,
users, projects) is the platform Owner's, whom flexvm calls the admin; the token written at first
start is one. A token can be narrowed below its user (a lower role, one project), never above.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

from flexvm.errors import InvalidInput


class Right(StrEnum):
    READ = "read"
    OPERATE = "operate"
    CHANGE = "change"
    OWN = "own"


class Role(IntEnum):
    """Ordered: a higher role holds every right of a lower one."""

    READER = 1
    VM_OPERATOR = 2
    CONTRIBUTOR = 3
    OWNER = 4

    @property
    def title(self) -> str:
        return _TITLES[self]

    @classmethod
    def parse(cls, field_name: str, text: str) -> Role:
        role = _BY_TITLE.get(text.replace("-", " ").replace("_", " ").strip().lower())
        if role is None:
            raise InvalidInput(field_name, f"{text!r} is not a role: use one of {', '.join(_TITLES.values())}")
        return role

    @classmethod
    def needed_for(cls, right: Right) -> Role:
        return _NEEDS[right]


_TITLES = {Role.READER: "Reader", Role.VM_OPERATOR: "VM Operator", Role.CONTRIBUTOR: "Contributor", Role.OWNER: "Owner"}
_BY_TITLE = {title.lower(): role for role, title in _TITLES.items()}
_NEEDS = {
    Right.READ: Role.READER,
    Right.OPERATE: Role.VM_OPERATOR,
    Right.CHANGE: Role.CONTRIBUTOR,
    Right.OWN: Role.OWNER,
}

ADMIN_USER = "admin"  # the bootstrap token's user: reserved, no user may take the name
BOOTSTRAP_TOKEN = "bootstrap"


@dataclass(frozen=True)
class Caller:
    """The user behind a request and the roles its token carries (already narrowed)."""

    user: str
    token_id: str
    platform_role: Role | None = None
    project_roles: Mapping[str, Role] = field(default_factory=dict)
    narrowed: bool = False  # the token carries less than its user: it may not make new tokens

    @property
    def is_admin(self) -> bool:
        return self.platform_role is Role.OWNER

    @property
    def has_rights(self) -> bool:
        return self.platform_role is not None or bool(self.project_roles)

    def role_in(self, project: str) -> Role | None:
        held = [r for r in (self.platform_role, self.project_roles.get(project)) if r is not None]
        return max(held) if held else None

    def may(self, project: str, right: Right) -> bool:
        role = self.role_in(project)
        return role is not None and role >= Role.needed_for(right)

    def sees(self, project: str) -> bool:
        return self.role_in(project) is not None


def narrowed(
    user: str,
    token_id: str,
    platform_role: Role | None,
    project_roles: Mapping[str, Role],
    *,
    cap: Role | None = None,
    only_project: str | None = None,
) -> Caller:
    """The caller a token makes of its user: at most ``cap``, and only in ``only_project``."""

    def capped(role: Role | None) -> Role | None:
        return None if role is None else role if cap is None else min(role, cap)

    if only_project is not None:
        held = [r for r in (platform_role, project_roles.get(only_project)) if r is not None]
        role = capped(max(held)) if held else None
        return Caller(user, token_id, None, {only_project: role} if role is not None else {}, narrowed=True)
    roles = {project: capped(role) for project, role in project_roles.items()}
    kept = {p: r for p, r in roles.items() if r is not None}
    return Caller(user, token_id, capped(platform_role), kept, narrowed=cap is not None)


# --- records ---------------------------------------------------------------------------------

QUOTA_NAMES = ("vcpus", "memory_mib", "vms", "disk_bytes", "instances")


@dataclass(frozen=True)
class Quotas:
    """A project's limits; None is no limit. Also used for what a project uses, and for an ask."""

    vcpus: int | None = None
    memory_mib: int | None = None
    vms: int | None = None
    disk_bytes: int | None = None
    instances: int | None = None

    def items(self) -> list[tuple[str, int | None]]:
        return [(name, getattr(self, name)) for name in QUOTA_NAMES]


@dataclass(frozen=True)
class Project:
    name: str
    description: str
    quotas: Quotas
    created_at: datetime


@dataclass(frozen=True)
class User:
    name: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its secret."""

    id: str
    user: str
    name: str
    role: Role | None
    project: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class Assignment:
    id: int
    user: str
    role: Role
    project: str | None  # None: the whole platform
    created_at: datetime


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    user: str | None
    token_id: str | None
    address: str
    method: str
    path: str
    action: str
    project: str | None
    resource: str
    request_id: str
    status: int
    outcome: str  # "succeeded", "accepted", "failed", "denied"
    detail: str = ""
    id: int = 0
