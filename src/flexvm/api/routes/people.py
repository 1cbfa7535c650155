"""Users, their tokens, who holds which role where, and the audit trail."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query, Request

from flexvm.access.people import People
from flexvm.api.access import Scope, platform_access, project_access, signed_in
from flexvm.api.access_schemas import (
    AssignmentOut,
    AuditEventOut,
    MeOut,
    RoleAssign,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserOut,
    UserUpdate,
)
from flexvm.api.deps import platform
from flexvm.api.params import Name
from flexvm.errors import Forbidden, InvalidInput, NotFound
from flexvm.model.access import Assignment, AuditEvent, Right, Role, TokenInfo
from flexvm.model.times import parse_duration, parse_moment
from flexvm.platform import Platform

router = APIRouter(tags=["access"])
audit_router = APIRouter(prefix="/audit", tags=["audit"])


def people(request: Request) -> People:
    return request.app.state.people  # type: ignore[no-any-return]


def token_out(info: TokenInfo) -> TokenOut:
    now = datetime.now(UTC)
    state = "revoked" if info.revoked_at else "expired" if info.expires_at and info.expires_at <= now else "active"
    return TokenOut(
        id=info.id,
        user=info.user,
        name=info.name,
        role=info.role.title if info.role else None,
        project=info.project,
        created_at=info.created_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        last_used_at=info.last_used_at,
        state=state,
    )


def assignment_out(a: Assignment) -> AssignmentOut:
    return AssignmentOut(id=a.id, user=a.user, role=a.role.title, project=a.project, created_at=a.created_at)


# --- who am I ---------------------------------------------------------------------------------


@router.get("/me", response_model=MeOut)
def me(scope: Scope = signed_in()) -> MeOut:
    caller = scope.caller
    return MeOut(
        user=caller.user,
        token_id=caller.token_id,
        platform_role=caller.platform_role.title if caller.platform_role else None,
        project_roles={project: role.title for project, role in caller.project_roles.items()},
    )


# --- users --------------------------------------------------------------------------------------


@router.get("/users", response_model=list[UserOut])
def list_users(_: Scope = platform_access(Right.CHANGE), who: People = Depends(people)) -> list[UserOut]:
    return [UserOut(name=u.name, disabled=u.disabled, created_at=u.created_at) for u in who.users()]


@router.post("/users", status_code=201, response_model=UserOut, responses={409: {"description": "name taken"}})
def create_user(
    body: UserCreate, scope: Scope = platform_access(Right.CHANGE), who: People = Depends(people)
) -> UserOut:
    scope.touched.append(body.name)
    user = who.create_user(body.name)
    return UserOut(name=user.name, disabled=user.disabled, created_at=user.created_at)


@router.patch("/users/{name}", response_model=UserOut)
def update_user(
    name: Name, body: UserUpdate, scope: Scope = platform_access(Right.CHANGE), who: People = Depends(people)
) -> UserOut:
    """Disable (or enable again) a user: a disabled user's tokens stop working at once."""
    scope.touched.append(name)
    user = who.set_disabled(name, body.disabled)
    return UserOut(name=user.name, disabled=user.disabled, created_at=user.created_at)


# --- tokens -------------------------------------------------------------------------------------


def _own_or_admin(scope: Scope, user: str) -> None:
    if not scope.caller.is_admin and scope.caller.user != user:
        raise Forbidden(
            f"only the admin manages another user's tokens; this token is user '{scope.caller.user}''s",
            details={"needed_role": "Owner", "scope": "platform"},
        )


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, scope: Scope = signed_in(), who: People = Depends(people)) -> TokenCreated:
    """A new token, shown once. A user makes their own; the admin makes anyone's. A token can be
    narrowed to a lower role or one project, never widened past its user's roles."""
    _own_or_admin(scope, body.user)
    if scope.caller.narrowed:
        raise Forbidden("a narrowed token cannot make tokens: use an unrestricted one", details={"field": "token"})
    expires = parse_duration(body.expires, "expires") if body.expires is not None else None
    role = Role.parse("role", body.role) if body.role is not None else None
    scope.touched.append(body.user)
    info, secret = who.create_token(body.user, name=body.name, expires_in=expires, role=role, project=body.project)
    return TokenCreated(**token_out(info).model_dump(), token=secret)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(user: str | None = None, scope: Scope = signed_in(), who: People = Depends(people)) -> list[TokenOut]:
    """One's own tokens; the admin sees everyone's (or one user's)."""
    if not scope.caller.is_admin:
        _own_or_admin(scope, user or scope.caller.user)
        user = scope.caller.user
    return [token_out(t) for t in who.tokens(user)]


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: str, scope: Scope = signed_in(), who: People = Depends(people)) -> TokenOut:
    info = who.token(token_id)
    if not scope.caller.is_admin and scope.caller.user != info.user:
        raise NotFound("token", token_id)  # another user's token is not shown to exist
    scope.touched.append(token_id)
    return token_out(who.revoke_token(token_id))


# --- roles --------------------------------------------------------------------------------------


@router.get("/roles", response_model=list[AssignmentOut])
def list_roles(scope: Scope = project_access(Right.READ), who: People = Depends(people)) -> list[AssignmentOut]:
    """Who holds which role on the project (platform roles are listed by /platform-roles)."""
    return [assignment_out(a) for a in who.assignments(project=scope.project)]


@router.post("/roles", status_code=201, response_model=AssignmentOut)
def assign_role(
    body: RoleAssign, scope: Scope = project_access(Right.OWN), who: People = Depends(people)
) -> AssignmentOut:
    if body.project is not None and body.project != scope.project:
        raise InvalidInput("project", "give the project as the query parameter, not in the body")
    scope.touched.append(body.user)
    return assignment_out(who.assign(body.user, Role.parse("role", body.role), scope.project))


@router.delete("/roles", response_model=AssignmentOut)
def remove_role(
    user: str, role: str, scope: Scope = project_access(Right.OWN), who: People = Depends(people)
) -> AssignmentOut:
    scope.touched.append(user)
    return assignment_out(who.unassign(user, Role.parse("role", role), scope.project))


@router.get("/platform-roles", response_model=list[AssignmentOut])
def list_platform_roles(_: Scope = platform_access(Right.READ), who: People = Depends(people)) -> list[AssignmentOut]:
    return [assignment_out(a) for a in who.assignments() if a.project is None]


@router.post("/platform-roles", status_code=201, response_model=AssignmentOut)
def assign_platform_role(
    body: RoleAssign, scope: Scope = platform_access(Right.CHANGE), who: People = Depends(people)
) -> AssignmentOut:
    if body.project is not None:
        raise InvalidInput("project", "a platform role has no project; use /roles?project=P for one")
    scope.touched.append(body.user)
    return assignment_out(who.assign(body.user, Role.parse("role", body.role), None))


@router.delete("/platform-roles", response_model=AssignmentOut)
def remove_platform_role(
    user: str, role: str, scope: Scope = platform_access(Right.CHANGE), who: People = Depends(people)
) -> AssignmentOut:
    scope.touched.append(user)
    return assignment_out(who.unassign(user, Role.parse("role", role), None))


# --- the audit trail ----------------------------------------------------------------------------


def _events(events: list[AuditEvent]) -> list[AuditEventOut]:
    return [AuditEventOut(**{k: v for k, v in e.__dict__.items()}) for e in events]


def _since(value: str | None) -> datetime | None:
    """'1h' (back from now), or a moment as parse_moment reads it ('-1h', ISO 8601, unix seconds)."""
    if value is None:
        return None
    now = datetime.now(UTC).timestamp()
    text = value.strip()
    if text[-1:] in "smhd" and text[:1].isdigit():
        text = f"-{text}"
    return datetime.fromtimestamp(parse_moment(text, "since", now=now, default=now), UTC)


@audit_router.get("", response_model=list[AuditEventOut])
def project_audit(
    user: str | None = None,
    since: str | None = Query(None, description="a duration back from now (1h, 7d) or a time"),
    limit: int = Query(100, ge=1, le=1000),
    scope: Scope = project_access(Right.OWN),
    p: Platform = Depends(platform),
) -> list[AuditEventOut]:
    """A project's audit trail, newest first: for its Owners (and the admin)."""
    assert scope.project is not None
    return _events(p.audit.query(projects=[scope.project], user=user, since=_since(since), limit=limit))


@audit_router.get("/all", response_model=list[AuditEventOut])
def platform_audit(
    user: str | None = None,
    since: str | None = Query(None, description="a duration back from now (1h, 7d) or a time"),
    limit: int = Query(100, ge=1, le=1000),
    _: Scope = platform_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> list[AuditEventOut]:
    """Every audit event, of every project and the platform: for the admin."""
    return _events(p.audit.query(user=user, since=_since(since), limit=limit))
