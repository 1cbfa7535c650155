"""The permission matrix: every route of the OpenAPI document × every kind of caller, each answer
checked against the access rule the route declares (``x-flexvm-access``).

The routes come from the document itself, so a new route is in the matrix the day it is added: it
must declare a rule (or the app does not build), and if it takes a body or a parameter no table
below knows, the test fails naming it. The callers (tests/unit/people_helpers.py): the admin, an
Owner, Contributor, VM Operator and Reader of team-a, team-b's Owner, a platform Reader, a user with
no role anywhere, and no token.

Expected answers, derived from the rule alone:
- no token: 401 Unauthorized;
- a token without any role: 403 (it carries no rights), except on ``signed-in`` routes;
- a project route, for a caller with no role in the project: 404 with ``details.kind == "project"``,
  exactly as if the project did not exist;
- a role too low: 403 AuthorizationFailed naming the role needed;
- allowed: anything but an access refusal or a server error.

Nothing real is changed: names in paths do not exist, and a body that would create something is,
for a caller the rule lets through, one that fails just after the rule (an unknown size, a
reserved name, a body of the wrong shape); the platform's fingerprint is the same after every
caller. A caller the rule refuses is sent the valid body too: the refusal must not depend on it.

FastAPI runs the rule's dependency before it validates the body or the route's own parameters
(tested here: a refused caller gets its refusal for a body of the wrong shape, not a 400). Only a
body that is not JSON at all is refused earlier, by the parser: that answer is the same for every
caller, so it tells nobody anything.

SQLite only: the rules read roles through the same store code on both backends (which the access
tests cover on each); ~1,500 requests per backend would add little but time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from flexvm.api import access_schemas, maintenance_schemas, schemas
from flexvm.api.access import RULE_KEY, Scope, api_routes, project_access, require_rules
from flexvm.api.app import OPEN_PATHS, create_app
from flexvm.model.access import Right
from flexvm.platform import Platform
from tests.conftest import TOKEN
from tests.unit.people_helpers import (
    ADMIN,
    PRINCIPALS,
    PROJECT,
    Principal,
    changed,
    fingerprint,
    headers_of,
    make_people,
)

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # see the docstring

METHODS = {"get", "post", "put", "patch", "delete"}
RULE_SCOPES = {"project", "platform", "any-role", "signed-in"}
RULE_RIGHTS = {"read", "operate", "change", "own", "admin"}
ROLE_RANKS = {"read": 1, "operate": 2, "change": 3, "own": 4}
ROLE_TITLES = {1: "Reader", 2: "VM Operator", 3: "Contributor", 4: "Owner"}

MISSING = "nosuch"  # no resource of any kind is called this
# Path parameters, by name: a value that names nothing but passes every format check.
PATH_VALUES = {
    "name": MISSING,
    "snapshot": MISSING,
    "rule_id": MISSING,
    "operation_id": "00000000-0000-0000-0000-000000000000",
    "token_id": "000000000000",
}
# Where a route's path names a project, the one its rule is about: team-a for the project's
# readers, 'default' (which is never deleted, and holds nothing here) for the admin's platform
# routes on projects, so that the admin changes nothing either.
PATH_OVERRIDES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/v1/projects/{name}"): {"name": PROJECT},
    ("PATCH", "/v1/projects/{name}"): {"name": "default"},
    ("DELETE", "/v1/projects/{name}"): {"name": "default"},
}
# Required query parameters (besides ``project``), by name.
QUERY_VALUES = {"batch": "Standard_B1s=1", "user": MISSING, "role": "Reader", "name": MISSING}


@dataclass(frozen=True)
class Body:
    """``valid``: schema-valid, what a refused caller is sent (it would act, were the rule missing).
    ``harmless``: for a caller the rule lets through, where ``valid`` would change something; it
    fails just after the rule. ``{user}`` stands for the caller's own user name."""

    valid: Any
    harmless: Any = None
    raw: bool = False  # bytes sent as application/octet-stream (an upload), not JSON


_VM = {"name": MISSING, "size": "No_Such_Size", "image": MISSING}
_RULE = {"metric": "cpu_percent", "operator": "gt", "threshold": 80, "action": "increase"}
BODIES: dict[tuple[str, str], Body] = {
    ("POST", "/v1/vms"): Body({**_VM, "size": "Standard_B1s"}, harmless=_VM),  # unknown size: 400
    ("POST", "/v1/vms/{name}/stop"): Body({"force": True}),
    ("PATCH", "/v1/vms/{name}"): Body({"ha_priority": 5}),
    ("POST", "/v1/vms/{name}/disk/resize"): Body({"size": "8G"}),
    ("POST", "/v1/vms/{name}/resize"): Body({"size": "Standard_B2s"}),
    ("POST", "/v1/vms/{name}/migrate"): Body({"cold": True}),
    ("POST", "/v1/vms/{name}/snapshots"): Body({"name": "snap"}),
    ("POST", "/v1/vms/{name}/capture"): Body({"image": MISSING}),
    ("POST", "/v1/vms/{name}/export"): Body({"file": "/nonexistent/export.tar"}),
    ("POST", "/v1/vms/import"): Body({"file": "/nonexistent/export.tar"}),  # not a file: 400
    ("POST", "/v1/sizes"): Body(
        {"name": "Custom_M1", "vcpus": 1, "memory": "512M", "disk": "2G"},
        harmless={"name": "Custom_M1", "vcpus": 1, "memory": "lots", "disk": "2G"},  # not a size: 400
    ),
    ("POST", "/v1/images"): Body({"name": MISSING, "disk": "/nonexistent/disk.qcow2"}, harmless={"name": MISSING}),
    ("POST", "/v1/images/upload"): Body(b"\0" * 4096, harmless=b"not a disk", raw=True),  # not a disk: 400
    ("POST", "/v1/images/build"): Body({"recipe": "tiny", "name": MISSING}, harmless={"recipe": "no-such-recipe"}),
    ("POST", "/v1/hosts"): Body(
        {"name": MISSING, "uri": "fake://nosuch"}, harmless={"name": MISSING, "uri": "bogus://nosuch"}
    ),
    ("PATCH", "/v1/hosts/{name}"): Body({"cpu_ratio": 2.0}),
    ("POST", "/v1/hosts/{name}/drain"): Body({"dry_run": True}),
    ("POST", "/v1/networks"): Body(
        {"name": MISSING, "subnet": "10.99.0.0/24", "range_start": "10.99.0.10", "range_end": "10.99.0.20"},
        harmless={"name": MISSING, "subnet": "not-a-subnet", "range_start": "x", "range_end": "y"},
    ),
    ("POST", "/v1/storage"): Body(
        {"name": MISSING, "path": "/srv/nosuch-flexvm"}, harmless={"name": MISSING, "path": "not/absolute"}
    ),
    ("POST", "/v1/availability-sets"): Body({"name": MISSING}, harmless={"name": MISSING, "fault_domains": "two"}),
    ("POST", "/v1/pool/rebalance"): Body({"dry_run": True}),
    ("POST", "/v1/maintenance/plan"): Body({"hosts": [MISSING]}),  # no such host: 404
    ("POST", "/v1/maintenance/runs"): Body({"hosts": [MISSING], "hook": "true"}),  # no such host: 404
    ("POST", "/v1/scalesets"): Body(
        {"name": MISSING, "size": "Standard_B1s", "image": MISSING, "instances": 1},
        harmless={"name": MISSING, "size": "No_Such_Size", "image": MISSING, "instances": 1},
    ),
    ("POST", "/v1/scalesets/{name}/scale"): Body({"instances": 2}),
    ("POST", "/v1/scalesets/{name}/update"): Body({"size": "Standard_B2s"}),
    ("PUT", "/v1/scalesets/{name}/autoscale"): Body({"min": 1, "max": 3, "default": 1}),
    ("POST", "/v1/scalesets/{name}/autoscale/rules"): Body(_RULE),
    ("POST", "/v1/scalesets/{name}/autoscale/simulate"): Body({"synthetic": True}),
    ("POST", "/v1/projects"): Body({"name": "new-project"}, harmless={"name": PROJECT}),  # taken: 409
    ("PATCH", "/v1/projects/{name}"): Body(
        {"quotas": {"vms": 5}}, harmless={"quotas": {"vms": 5}, "clear": ["no-such-quota"]}
    ),
    ("POST", "/v1/users"): Body({"name": "new-user"}, harmless={"name": "admin"}),  # reserved: 400
    ("PATCH", "/v1/users/{name}"): Body({"disabled": True}),
    ("POST", "/v1/tokens"): Body({"user": "{user}"}, harmless={"user": "{user}", "expires": "whenever"}),
    ("POST", "/v1/roles"): Body({"user": MISSING, "role": "Reader"}),  # no such user: 404
    ("POST", "/v1/platform-roles"): Body({"user": MISSING, "role": "Reader"}),
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    rule: dict[str, str]
    operation: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def routes_of(doc: dict[str, Any]) -> list[Route]:
    return [
        Route(method.upper(), path, operation.get(RULE_KEY, {}), operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def body_model(doc: dict[str, Any], route: Route) -> type[BaseModel] | None:
    """The pydantic model of the route's request body, found by its schema's name."""
    content = route.operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    schema = content["schema"]
    ref = schema.get("$ref") or next(s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s)
    name = ref.rsplit("/", 1)[1]
    model = getattr(schemas, name, None) or getattr(access_schemas, name, None) or getattr(maintenance_schemas, name)
    assert issubclass(model, BaseModel), name
    return model


# --- what each caller must get ---------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    status: int | None  # None: allowed, any answer that is not a refusal
    needed_role: str | None = None
    no_rights: bool = False

    @property
    def allowed(self) -> bool:
        return self.status is None


ALLOWED = Expected(None)


def expected(rule: dict[str, str], who: Principal) -> Expected:
    if not who.token:
        return Expected(401)
    scope, right = rule["scope"], rule["right"]
    if scope == "signed-in":
        return ALLOWED
    if not who.rights:
        return Expected(403, no_rights=True)
    if scope == "any-role":
        return ALLOWED
    if scope == "platform":
        if right == "read":
            return ALLOWED if who.platform_role else Expected(403, "Reader")
        return ALLOWED if who.admin else Expected(403, "Owner")
    assert scope == "project", rule
    if who.rank == 0:
        return Expected(404)  # as if team-a did not exist
    if right == "admin":
        return ALLOWED if who.admin else Expected(403, "Owner")
    needed = ROLE_RANKS[right]
    return ALLOWED if who.rank >= needed else Expected(403, ROLE_TITLES[needed])


def mismatch(response: Any, want: Expected) -> str | None:
    """Why the answer is not what the rule makes of this caller (None: it is)."""
    status = response.status_code
    try:
        answer = response.json() if response.content else None
    except ValueError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    error = error if isinstance(error, dict) else {}
    details = error.get("details") or {}
    if want.allowed:
        if status >= 500:
            return "a server error"
        if status in (401, 403):
            return "refused, though its rule allows this caller"
        if status == 404 and details.get("kind") == "project":
            return "answered 'no such project', though its rule allows this caller"
        return None
    if status != want.status:
        return f"expected {want.status}"
    if status == 401:
        return None if error.get("code") == "Unauthorized" else "401 without code Unauthorized"
    if status == 404:
        return None if details.get("kind") == "project" else "404 that is not about the project"
    if error.get("code") != "AuthorizationFailed":
        return "403 without code AuthorizationFailed"
    if want.no_rights:
        return None if "carries no rights" in error.get("message", "") else "403 that does not say 'no rights'"
    if details.get("needed_role") != want.needed_role:
        return f"403 naming needed role {details.get('needed_role')!r}, not {want.needed_role!r}"
    return None


# --- the requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    params: dict[str, str]
    body: Any = None
    has_body: bool = False
    raw: bool = False


def fill(value: Any, who: Principal) -> Any:
    user = who.name if who.token else MISSING
    if isinstance(value, str):
        return value.replace("{user}", user)
    if isinstance(value, dict):
        return {k: fill(v, who) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, who) for v in value]
    return value


def request_for(route: Route, who: Principal, want: Expected) -> Request:
    """The request this caller sends: nonexistent names, team-a, and the body its answer calls for."""
    url = route.path
    overrides = PATH_OVERRIDES.get(route.key, {})
    params: dict[str, str] = {}
    for param in route.operation.get("parameters", []):
        name, where = param["name"], param["in"]
        if where == "path":
            assert name in overrides or name in PATH_VALUES, f"{route}: add path parameter {name!r} to PATH_VALUES"
            url = url.replace("{" + name + "}", overrides.get(name, PATH_VALUES.get(name, "")))
        elif where == "query" and name == "project":
            params["project"] = PROJECT
        elif where == "query" and param.get("required"):
            assert name in QUERY_VALUES, f"{route}: add required query parameter {name!r} to QUERY_VALUES"
            params[name] = QUERY_VALUES[name]
    if "requestBody" not in route.operation:
        return Request(route.method, url, params)
    body = BODIES[route.key]
    chosen = body.harmless if want.allowed and body.harmless is not None else body.valid
    return Request(route.method, url, params, fill(chosen, who), has_body=True, raw=body.raw)


def send(client: TestClient, request: Request, token: str | None, *, raw: bytes | None = None, body: Any = None) -> Any:
    """The request with its own body, or ``body`` (JSON) or ``raw`` bytes sent as JSON instead."""
    headers = headers_of(token)
    if raw is not None:
        headers["content-type"] = "application/json"
        return client.request(request.method, request.url, params=request.params, headers=headers, content=raw)
    if body is None and request.has_body:
        body = request.body
        if request.raw:
            headers["content-type"] = "application/octet-stream"
            return client.request(request.method, request.url, params=request.params, headers=headers, content=body)
    kwargs = {} if body is None else {"json": body}
    return client.request(request.method, request.url, params=request.params, headers=headers, **kwargs)


Matrix = tuple[TestClient, dict[Principal, str | None], list[Route]]


@pytest.fixture
def matrix(platform: Platform) -> Iterator[Matrix]:
    """The app on a platform with the matrix's people, their tokens, and the document's routes."""
    tokens = make_people(platform)
    with TestClient(create_app(platform, TOKEN)) as client:
        doc = client.get("/openapi.json").json()
        yield client, tokens, routes_of(doc)


# --- the tests -------------------------------------------------------------------------------


@sqlite_only
def test_the_openapi_document_declares_a_rule_on_every_route(platform: Platform) -> None:
    app = create_app(platform, TOKEN)
    with TestClient(app) as client:
        doc = client.get("/openapi.json").json()
    routes = routes_of(doc)
    assert len(routes) > 50  # the whole API, not a part of it
    for route in routes:
        rule = route.rule
        assert rule, f"{route} declares no {RULE_KEY} in the OpenAPI document"
        assert rule["scope"] in RULE_SCOPES and rule["right"] in RULE_RIGHTS, (str(route), rule)
        assert set(rule) <= {"scope", "right", "project_in"}, (str(route), rule)
        assert rule["right"] != "admin" or rule["scope"] == "project", (str(route), rule)
        assert rule.get("project_in", "path") == "path" and ("project_in" not in rule or "{name}" in route.path)
    # Every route the app serves is in the document, except the open ones.
    documented = {(r.method, r.path) for r in routes}
    served = {
        (method, path) for path, route in api_routes(app.routes) for method in route.methods or () if method != "HEAD"
    }
    assert served - documented == {("GET", path) for path in OPEN_PATHS - {"/openapi.json"}}
    assert documented <= served


def test_an_app_with_a_route_without_a_rule_is_not_built() -> None:
    """Also in an included router: newer FastAPI keeps those whole instead of copying their routes."""
    router = APIRouter(prefix="/things")

    @router.get("")
    def ruled(scope: Scope = project_access(Right.READ)) -> list[str]:
        return []

    @router.get("/{name}")
    def unruled(name: str) -> str:
        return name

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    with pytest.raises(RuntimeError, match=r"\['GET'\] /v1/things/\{name\} declares no access rule"):
        require_rules(app, set())
    require_rules(app, {"/v1/things/{name}"})
    doc = app.openapi()
    assert doc["paths"]["/v1/things"]["get"][RULE_KEY] == {"scope": "project", "right": "read"}


@sqlite_only
def test_every_route_has_a_request_in_the_tables(matrix: Matrix) -> None:
    """A route the tables do not know fails here by name, before the matrix runs."""
    client, _tokens, routes = matrix
    doc = client.get("/openapi.json").json()
    with_body = {r.key for r in routes if "requestBody" in r.operation}
    assert not with_body - set(BODIES), f"add a request body to BODIES for: {sorted(with_body - set(BODIES))}"
    assert not set(BODIES) - with_body, f"BODIES names routes that take no body: {sorted(set(BODIES) - with_body)}"
    assert not set(PATH_OVERRIDES) - {r.key for r in routes}, "PATH_OVERRIDES names routes that do not exist"
    for route in routes:
        model = body_model(doc, route)
        if model is None:
            continue
        body = BODIES[route.key]
        model.model_validate(fill(body.valid, ADMIN))  # schema-valid: a refusal must not hinge on it
        request_for(route, ADMIN, ALLOWED)  # every path and query parameter has a value


@sqlite_only
def test_every_route_answers_each_caller_as_its_rule_says(matrix: Matrix, platform: Platform) -> None:
    client, tokens, routes = matrix
    assert not set(BODIES) - {r.key for r in routes}
    before = fingerprint(platform)
    failures: list[str] = []
    cells = 0
    for who in PRINCIPALS:
        for route in routes:
            want = expected(route.rule, who)
            request = request_for(route, who, want)
            response = send(client, request, tokens[who])
            cells += 1
            why = mismatch(response, want)
            if why is not None:
                failures.append(f"{route} as {who.name}: {why}; got {response.status_code} {response.text[:300]}")
        after = fingerprint(platform)
        assert after == before, f"requests as {who.name} changed the platform: {changed(before, after)}"
    assert not failures, f"{len(failures)} of {cells} answers break their route's rule:\n" + "\n".join(failures)
    assert cells == len(routes) * len(PRINCIPALS)


@sqlite_only
def test_a_refused_caller_is_refused_before_its_body_is_read(matrix: Matrix, platform: Platform) -> None:
    """A body of the wrong shape does not turn a refusal into a 400: the rule runs first."""
    client, tokens, routes = matrix
    before = fingerprint(platform)
    failures = []
    for who in PRINCIPALS:
        for route in routes:
            want = expected(route.rule, who)
            if want.allowed or "requestBody" not in route.operation:
                continue
            request = request_for(route, who, want)
            response = send(client, request, tokens[who], body=["not", "an", "object"])
            why = mismatch(response, want)
            if why is not None:
                failures.append(f"{route} as {who.name}: {why}; got {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert fingerprint(platform) == before


@sqlite_only
def test_a_body_that_is_not_json_gets_one_answer_whoever_sends_it(matrix: Matrix) -> None:
    """FastAPI parses the JSON before any dependency runs: that 400 may come before the rule, but it
    is the same for every caller, so it tells an unauthorised one nothing about the platform."""
    client, tokens, routes = matrix
    for route in routes:
        if "application/json" not in route.operation.get("requestBody", {}).get("content", {}):
            continue
        answers = set()
        for who in PRINCIPALS:
            request = request_for(route, who, expected(route.rule, who))
            response = send(client, request, tokens[who], raw=b"{not json")
            answers.add((response.status_code, response.text))
        assert len(answers) == 1, (str(route), answers)
        assert next(iter(answers))[0] == 400


# --- the name rules the document declares are the routes' own ---------------------------------

BREAKERS = ("1bad", "bad name", "xyz!", "Upper_Case_")  # the first that a pattern refuses is sent
# Routes that look a name up without checking it first: one against the rule is never found (404),
# which refuses it as surely.
LOOKED_UP_UNCHECKED = {
    ("PATCH", "/v1/projects/{name}"),
    ("DELETE", "/v1/projects/{name}"),
    ("PATCH", "/v1/users/{name}"),
}
# Where a route's check names a field otherwise than the document does.
FIELD_ALIASES = {("POST", "/v1/vms/{name}/snapshots", "body", "name"): "snapshot"}


def declared_rules(doc: dict[str, Any], route: Route) -> Iterator[tuple[str, str, str]]:
    """(where, name, pattern) of each parameter and top-level body field the document gives a pattern."""

    def pattern_of(schema: dict[str, Any]) -> str | None:
        found = [schema.get("pattern")] + [s.get("pattern") for s in schema.get("anyOf", [])]
        return next((p for p in found if p), None)

    for param in route.operation.get("parameters", []):
        pattern = pattern_of(param.get("schema", {}))
        if pattern:
            yield param["in"], param["name"], pattern
    model = body_model(doc, route)
    if model is not None:
        for name, prop in model.model_json_schema().get("properties", {}).items():
            pattern = pattern_of(prop)
            if pattern:
                yield "body", name, pattern


@sqlite_only
def test_the_routes_refuse_what_the_declared_name_rules_refuse(matrix: Matrix, platform: Platform) -> None:
    """The document's patterns only declare the rules (api/params.py); the routes' own checks enforce
    them. As the admin, a value each pattern refuses must be a 400 naming its field: or, for a body
    field read only once the path's resource is found, a 404 of that resource."""
    client, tokens, routes = matrix
    doc = client.get("/openapi.json").json()
    before = fingerprint(platform)
    failures, checked = [], 0
    for route in routes:
        for where, name, pattern in declared_rules(doc, route):
            bad = next(b for b in BREAKERS if not re.fullmatch(pattern, b))
            request = request_for(route, ADMIN, Expected(403))  # the valid body, with one value broken
            url, params, body = request.url, dict(request.params), request.body
            if where == "path":
                url = route.path.replace("{" + name + "}", quote(bad))
                for other, value in PATH_VALUES.items():
                    url = url.replace("{" + other + "}", value)
            elif where == "query":
                params[name] = bad
            else:
                body = {**body, name: bad}
            response = send(client, replace(request, url=url, params=params, body=body), tokens[ADMIN])
            checked += 1
            error = response.json().get("error", {}) if response.status_code >= 400 else {}
            details = error.get("details", {})
            is_project = name == "project" or (where == "path" and route.rule.get("project_in") == "path")
            field = FIELD_ALIASES.get((*route.key, where, name), "project" if is_project else name)
            if response.status_code == 400 and details.get("field") == field:
                continue
            if route.key in LOOKED_UP_UNCHECKED and response.status_code == 404 and details.get("name") == bad:
                continue
            if where == "body" and response.status_code == 404 and details.get("kind") not in (None, "project"):
                continue
            failures.append(f"{route} {where} {name}={bad!r}: {response.status_code} {response.text[:200]}")
    assert checked > 50
    assert not failures, "declared rules the routes do not enforce:\n" + "\n".join(failures)
    assert fingerprint(platform) == before
