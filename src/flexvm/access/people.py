"""Users, their tokens and roles, and turning a request's bearer token into a ``Caller``."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from flexvm.access import tokens
from flexvm.errors import InvalidInput, NotFound, Unauthorized
from flexvm.model.access import ADMIN_USER, BOOTSTRAP_TOKEN, Assignment, Caller, Role, TokenInfo, User, narrowed
from flexvm.model.names import check_name
from flexvm.store.access import ProjectRepo, RoleRepo, TokenRepo, UserRepo
from flexvm.store.db import Database

# last_used is written at most this often per token: a write on every request would serialise
# reads behind the database's write lock for a figure nobody needs to the second.
LAST_USED_RESOLUTION = timedelta(minutes=1)


REFUSED = "missing or wrong bearer token"


def refused(reason: str, token_id: str | None = None) -> Unauthorized:
    return Unauthorized(REFUSED, reason=reason, token_id=token_id)


class People:
    def __init__(self, db: Database, bootstrap_token: str) -> None:
        self.db = db
        self.bootstrap_token = bootstrap_token

    # --- who is calling --------------------------------------------------------------------
    def authenticate(self, header: str | None, now: datetime | None = None) -> Caller:
        if not header:
            raise refused("missing")
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise refused("malformed")
        if secrets.compare_digest(value.encode(), self.bootstrap_token.encode()):
            return Caller(ADMIN_USER, BOOTSTRAP_TOKEN, Role.OWNER)
        parsed = tokens.parse(value)
        if parsed is None:
            raise refused("malformed")
        token_id, secret = parsed
        now = now or datetime.now(UTC)
        with self.db.session() as session:
            row = TokenRepo(session).row(token_id)
            if row is None or not tokens.matches(secret, row.secret_sha256):
                raise refused("unknown", token_id)
            if row.revoked_at is not None:
                raise refused("revoked", token_id)
            if row.expires_at is not None and row.expires_at <= now:
                raise refused("expired", token_id)
            user = UserRepo(session).find(row.user)
            if user is None or user.disabled:
                raise refused("user disabled", token_id)
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
                row.last_used_at = now
            platform_role, project_roles = _roles(RoleRepo(session).of_user(row.user))
            cap = Role[row.role] if row.role else None
            return narrowed(row.user, row.id, platform_role, project_roles, cap=cap, only_project=row.project)

    # --- users -----------------------------------------------------------------------------
    def create_user(self, name: str) -> User:
        check_name("name", name)
        if name == ADMIN_USER:
            raise InvalidInput("name", f"'{ADMIN_USER}' is reserved for the token written at first start")
        with self.db.session() as session:
            return UserRepo(session).add(name)

    def users(self) -> list[User]:
        with self.db.session() as session:
            return UserRepo(session).list()

    def user(self, name: str) -> User:
        with self.db.session() as session:
            return UserRepo(session).get(name)

    def set_disabled(self, name: str, disabled: bool) -> User:
        """A disabled user's tokens stop working at the next request: each one reads the user."""
        with self.db.session() as session:
            return UserRepo(session).set_disabled(name, disabled)

    # --- tokens ----------------------------------------------------------------------------
    def create_token(
        self,
        user: str,
        *,
        name: str = "",
        expires_in: float | None = None,
        role: Role | None = None,
        project: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """(the token as listed, the secret token to show once)."""
        if name:
            check_name("name", name)
        token_id, token, digest = tokens.new_token()
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
        with self.db.session() as session:
            UserRepo(session).get(user)
            if project is not None:
                ProjectRepo(session).get(project)
            info = TokenRepo(session).add(
                token_id, user, name, digest, role=role, project=project, expires_at=expires_at
            )
        return info, token

    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        with self.db.session() as session:
            return TokenRepo(session).list(user)

    def token(self, token_id: str) -> TokenInfo:
        with self.db.session() as session:
            info = TokenRepo(session).find(token_id)
        if info is None:
            raise NotFound("token", token_id)
        return info

    def revoke_token(self, token_id: str) -> TokenInfo:
        with self.db.session() as session:
            row = TokenRepo(session).row(token_id)
            if row is None:
                raise NotFound("token", token_id)
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            session.flush()
            info = TokenRepo(session).find(token_id)
        assert info is not None
        return info

    # --- roles -----------------------------------------------------------------------------
    def assign(self, user: str, role: Role, project: str | None) -> Assignment:
        with self.db.session() as session:
            UserRepo(session).get(user)
            if project is not None:
                ProjectRepo(session).get(project)
            repo = RoleRepo(session)
            return repo.find(user, role, project) or repo.add(user, role, project)

    def assignments(self, *, project: str | None = None, user: str | None = None) -> list[Assignment]:
        with self.db.session() as session:
            return RoleRepo(session).list(project=project, user=user)

    def unassign(self, user: str, role: Role, project: str | None) -> Assignment:
        with self.db.session() as session:
            repo = RoleRepo(session)
            found = repo.find(user, role, project)
            if found is None:
                where = f"project '{project}'" if project else "the platform"
                raise NotFound("role assignment", f"{role.title} of {user} on {where}")
            repo.delete(found.id)
            return found


def _roles(assignments: list[Assignment]) -> tuple[Role | None, dict[str, Role]]:
    platform: Role | None = None
    projects: dict[str, Role] = {}
    for a in assignments:
        if a.project is None:
            platform = a.role if platform is None else max(platform, a.role)
        else:
            projects[a.project] = max(projects.get(a.project, a.role), a.role)
    return platform, projects
