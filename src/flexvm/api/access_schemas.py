"""Request and response shapes of projects, users, tokens, roles and the audit trail."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


QUOTA_HELP = "memory and disk take units (8G, 512M); omit for no limit"


class QuotasIn(Strict):
    vcpus: int | None = Field(None, ge=0)
    memory: str | int | None = Field(None, description=QUOTA_HELP)
    vms: int | None = Field(None, ge=0)
    disk: str | int | None = Field(None, description=QUOTA_HELP)
    instances: int | None = Field(None, ge=0, description="scale-set instances")


class ProjectCreate(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,23}$", description="lowercase letters, digits, hyphens")
    description: str = Field("", max_length=1000)
    quotas: QuotasIn | None = None


class ProjectQuotasUpdate(Strict):
    quotas: QuotasIn
    clear: list[str] = Field(default_factory=list, description="quotas to remove (no limit)")


class QuotaUse(BaseModel):
    quota: str
    used: int
    limit: int | None


class ProjectNetwork(BaseModel):
    network: str
    addresses: int = Field(description="addresses the project's VMs hold on it")
    blocks: list[str] = Field(description="the blocks of its range that are the project's own (CIDR)")


class ProjectOut(BaseModel):
    name: str
    description: str
    created_at: datetime
    quotas: list[QuotaUse] = Field(default_factory=list, description="use against every limit (project show)")
    your_role: str | None = None
    networks: list[ProjectNetwork] = Field(
        default_factory=list, description="the project's share of each host network (project show)"
    )


class UserCreate(Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")


class UserOut(BaseModel):
    name: str
    disabled: bool
    created_at: datetime


class UserUpdate(Strict):
    disabled: bool


class TokenCreate(Strict):
    user: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
    name: str = Field("", pattern=r"^([A-Za-z][A-Za-z0-9-]{0,63})?$")
    expires: str | None = Field(None, description="a duration: 30d, 12h; omit for no expiry")
    role: str | None = Field(None, description="narrow the token to at most this role")
    project: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{0,23}$", description="narrow it to one project")


class TokenOut(BaseModel):
    id: str
    user: str
    name: str
    role: str | None
    project: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    state: str = Field(description="active, expired or revoked")


class TokenCreated(TokenOut):
    token: str = Field(description="the secret, shown this once: it is kept only as a hash")


class RoleAssign(Strict):
    user: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
    role: str = Field(description="Owner, Contributor, VM Operator or Reader")
    project: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{0,23}$", description="omit for the whole platform")


class AssignmentOut(BaseModel):
    id: int
    user: str
    role: str
    project: str | None
    created_at: datetime


class MeOut(BaseModel):
    user: str
    token_id: str
    platform_role: str | None
    project_roles: dict[str, str]


class AuditEventOut(BaseModel):
    id: int
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
    outcome: str
    detail: str
