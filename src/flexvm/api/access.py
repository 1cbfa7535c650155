"""Who may call a route: each route declares one access rule as a dependency.

The rule checks the caller's rights before the route runs and gives it a ``Scope``: the caller and,
for project routes, the project it acts in, with which the route turns names into keys. The rule
is also written into the OpenAPI document (``x-flexvm-access``), where the permission matrix test
reads it; ``require_rules`` refuses to build an app with a route that declares none.

Refusals, as the field's users asked for them: a project the caller holds no role in answers 404,
exactly as one that does not exist; a role too low answers 403 naming the role needed; a token
that carries no rights at all says so (403) instead of answering empty lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fastapi import Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from flexvm.access.people import People
from flexvm.api.params import PROJECT_SCHEMA, ProjectName
from flexvm.errors import Forbidden, NotFound, Unauthorized
from flexvm.model.access import Caller, Right, Role
from flexvm.model.names import check_name
from flexvm.model.projects import DEFAULT_PROJECT, check_project, key_of, split_key
from flexvm.platform import Platform

RULE_KEY = "x-flexvm-access"
PROJECT_HELP = "the project to act in (default: 'default')"
PROJECT_PATTERN = PROJECT_SCHEMA["pattern"]  # checked by check_project: declared, for clients


def authenticate(request: Request) -> Caller:
    """The caller, from the bearer token (401 for any bad token, one answer for all)."""
    cached = getattr(request.state, "caller", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    people: People = request.app.state.people
    try:
        caller = people.authenticate(request.headers.get("authorization"))
    except Unauthorized as err:
        request.state.refusal = f"token {err.reason}"
        request.state.token_id = err.token_id
        raise
    request.state.caller = caller
    return caller


@dataclass
class Scope:
    caller: Caller
    project: str | None = None  # None on platform routes
    touched: list[str] = field(default_factory=list)  # the keys the route named: for the audit trail

    def key(self, name: str, field: str = "name") -> str:
        """The key of a name given in this scope's project (checked by the naming rule)."""
        check_name(field, name)
        key = key_of(self.project or DEFAULT_PROJECT, name, field)
        self.touched.append(key)
        return key

    def owns(self, key: str) -> bool:
        return split_key(key)[0] == (self.project or DEFAULT_PROJECT)


def _scoped(request: Request, scope: Scope) -> Scope:
    request.state.scope = scope
    return scope


def _refuse(request: Request, err: Exception) -> NoReturn:
    request.state.refusal = str(err)
    raise err


def _needs_rights(request: Request, caller: Caller) -> None:
    if not caller.has_rights:
        _refuse(
            request,
            Forbidden(
                f"this token carries no rights: user '{caller.user}' holds no role on any project or on the "
                "platform (an Owner of a project, or the admin, can grant one)",
                details={"user": caller.user},
            ),
        )


def _ruled(dependency: Callable[..., Any], rule: dict[str, str]) -> Any:
    dependency.access_rule = rule  # type: ignore[attr-defined]
    return Depends(dependency)


def _project_check(request: Request, project: str, caller: Caller, right: Right, admin: bool = False) -> Scope:
    _needs_rights(request, caller)
    check_project("project", project)
    request.state.project = project
    platform: Platform = request.app.state.platform
    if not caller.sees(project) or (caller.platform_role is not None and not platform.projects.exists(project)):
        _refuse(request, NotFound("project", project))
    if admin and not caller.is_admin:
        _refuse(
            request,
            Forbidden(
                f"this reaches the server's own files, a platform matter: it needs the admin; user '{caller.user}' "
                "is not",
                details={"needed_role": "Owner", "scope": "platform"},
            ),
        )
    if not caller.may(project, right):
        needed = Role.needed_for(right)
        held = caller.role_in(project)
        _refuse(
            request,
            Forbidden(
                f"this needs the {needed.title} role on project '{project}'; "
                f"user '{caller.user}' holds {held.title if held else 'no role'} there",
                details={"needed_role": needed.title, "project": project, "user": caller.user},
            ),
        )
    return _scoped(request, Scope(caller, project))


def project_access(right: Right, *, admin: bool = False) -> Any:
    """A route on one project's resources (the ``project`` query parameter): the caller needs
    ``right`` there, and with ``admin`` must be the admin too (server paths: export, import)."""

    def check(
        request: Request,
        project: str = Query(
            DEFAULT_PROJECT, description=PROJECT_HELP, max_length=24, json_schema_extra={"pattern": PROJECT_PATTERN}
        ),
        caller: Caller = Depends(authenticate),
    ) -> Scope:
        return _project_check(request, project, caller, right, admin)

    return _ruled(check, {"scope": "project", "right": "admin" if admin else right.value})


def named_project_access(right: Right) -> Any:
    """A route on a project itself (``/projects/{name}``): the caller needs ``right`` there."""

    def check(request: Request, name: ProjectName, caller: Caller = Depends(authenticate)) -> Scope:
        return _project_check(request, name, caller, right)

    return _ruled(check, {"scope": "project", "right": right.value, "project_in": "path"})


def platform_access(right: Right) -> Any:
    """A platform matter: reading needs a role on the platform; changing needs the admin."""

    def check(request: Request, caller: Caller = Depends(authenticate)) -> Scope:
        _needs_rights(request, caller)
        role = caller.platform_role
        if (right is Right.READ and role is not None) or role is Role.OWNER:
            return _scoped(request, Scope(caller))
        needed = "a role on the platform" if right is Right.READ else "the platform Owner (admin) role"
        _refuse(
            request,
            Forbidden(
                f"this is a platform matter and needs {needed}; user '{caller.user}' holds "
                f"{role.title + ' on the platform' if role else 'no platform role'}",
                details={"needed_role": "Reader" if right is Right.READ else "Owner", "scope": "platform"},
            ),
        )
        raise AssertionError("unreachable")

    return _ruled(check, {"scope": "platform", "right": right.value})


def any_role() -> Any:
    """Shared reading (sizes, public images, the projects one sees): any role anywhere."""

    def check(request: Request, caller: Caller = Depends(authenticate)) -> Scope:
        _needs_rights(request, caller)
        return _scoped(request, Scope(caller))

    return _ruled(check, {"scope": "any-role", "right": Right.READ.value})


def signed_in() -> Any:
    """Who am I, and one's own tokens: any valid token, even one without rights."""

    def check(request: Request, caller: Caller = Depends(authenticate)) -> Scope:
        return _scoped(request, Scope(caller))

    return _ruled(check, {"scope": "signed-in", "right": Right.READ.value})


def rule_of(route: APIRoute) -> dict[str, str] | None:
    for dependency in route.dependant.dependencies:
        rule = getattr(dependency.call, "access_rule", None)
        if rule is not None:
            return rule  # type: ignore[no-any-return]
    return None


def api_routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every API route with its full path, also those of included routers. FastAPI before 0.16x
    copied an included router's routes into the app's; later ones keep the router whole (an
    ``_IncludedRouter``), and copy each route's ``openapi_extra`` when they first serve or document
    it, so the rule must be set on these originals, before the app answers anything."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
            continue
        router = getattr(route, "original_router", None)
        if router is not None:
            yield from api_routes(router.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]


def require_rules(app: FastAPI, open_paths: set[str]) -> None:
    """Every route declares exactly one access rule, written into its OpenAPI operation."""
    for path, route in api_routes(app.routes):
        if path in open_paths:
            continue
        rule = rule_of(route)
        if rule is None:
            raise RuntimeError(f"route {sorted(route.methods or ())} {path} declares no access rule")
        route.openapi_extra = {**(route.openapi_extra or {}), RULE_KEY: rule}
