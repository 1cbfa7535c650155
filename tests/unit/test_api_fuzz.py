"""The API fuzzed from its own OpenAPI document (schemathesis): as team-a's Reader, and with no token.

Each operation gets a few schema-valid requests (positive: what the document says is fine, in
project team-a so that the Reader gets past the project) and a few schema-violating ones
(negative). Bounded in count (EXAMPLES per operation and mode) and time (BUDGET_SECONDS), and
derandomised, so a run is the same run every time the document is.

As the Reader: no server error; every 403 is an AuthorizationFailed; nothing changes (the
platform's fingerprint, all but the audit trail, is the same after); and a schema-valid request is
not refused for a field whose rule the document declares (names: the permission matrix's
test_the_routes_refuse_what_the_declared_name_rules_refuse checks the routes enforce what it
declares). With no token: every answer is the one 401.

SQLite only: the fuzz is about the API's surface, which is the same on both backends; a few
hundred generated requests per backend would double its cost for nothing the other tiers miss.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

from flexvm.api.app import create_app
from flexvm.platform import Platform
from tests.conftest import TOKEN
from tests.unit.people_helpers import NO_TOKEN, PROJECT, READER, changed, fingerprint, headers_of, make_people

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # see the docstring

EXAMPLES = 3  # per operation and generation mode: ~89 operations x 2 modes x 3 = at most ~530 requests
BUDGET_SECONDS = 50.0  # past this no more requests are sent (the run still checks what it sent)
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# A name the naming rule takes can still be too long once prefixed with its project (a key holds
# at most 64 characters): the document cannot say so for every project at once.
UNDECLARABLE = ("is too long for project",)


@dataclass
class Answer:
    operation: str
    mode: str
    status: int
    body: Any
    request: str
    not_json: bool = False  # the request's body was bytes that do not parse as JSON

    def __str__(self) -> str:
        return f"{self.operation} ({self.mode}): {self.status} {str(self.body)[:300]} <- {self.request[:300]}"


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    skipped: int = 0


def declared_fields(doc: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """The parameters and top-level body fields whose value the document constrains by a pattern."""

    def patterned(schema: dict[str, Any]) -> bool:
        return "pattern" in schema or any("pattern" in s for s in schema.get("anyOf", []))

    names = {p["name"] for p in operation.get("parameters", []) if patterned(p.get("schema", {}))}
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        schema = content["schema"]
        refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
        for ref in filter(None, refs):
            body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
            names |= {name for name, prop in body.get("properties", {}).items() if patterned(prop)}
    return names


def fuzz(platform: Platform, token: str | None) -> tuple[Run, dict[str, Any]]:
    """Every operation of the document, EXAMPLES requests a mode, sent with ``token``."""
    app = create_app(platform, TOKEN)
    doc = app.openapi()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    run = Run()
    deadline = time.monotonic() + BUDGET_SECONDS
    for result in schema.get_all_operations():
        operation = result.ok()
        takes_project = any(p.name == "project" for p in operation.query)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fixed = {"project": PROJECT} if takes_project and mode.is_positive else None
            strategy = operation.as_strategy(mode, query=fixed)
            send = sender(run, operation.label, mode.value, token, deadline)
            # Unsatisfiable: nothing about this operation can be made invalid (no parameters, no body).
            with contextlib.suppress(Unsatisfiable):
                FUZZ_SETTINGS(given(strategy)(send))()
    return run, doc


def sender(run: Run, label: str, mode: str, token: str | None, deadline: float) -> Callable[[Case], None]:
    def send(case: Case) -> None:
        if time.monotonic() > deadline:
            run.skipped += 1
            return
        request = f"{case.method} {case.formatted_path} query={case.query} body={getattr(case, 'body', None)!r}"
        try:
            response = case.call(headers=headers_of(token))
        except Exception as err:  # an unhandled error in the app: a server error
            run.crashes.append(f"{label} ({mode}): {type(err).__name__}: {err} <- {request[:300]}")
            return
        try:
            body = response.json()
        except ValueError:
            body = response.text
        run.answers.append(Answer(label, mode, response.status_code, body, request, not_json(case)))

    return send


def not_json(case: Case) -> bool:
    raw = getattr(case, "body", None)
    if not isinstance(raw, bytes):
        return False
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


@pytest.fixture
def people(platform: Platform) -> Iterator[dict[Any, str | None]]:
    yield make_people(platform)


def test_the_fuzzer_as_a_reader_meets_no_server_error_and_changes_nothing(
    platform: Platform, people: dict[Any, str | None]
) -> None:
    before = fingerprint(platform)
    run, doc = fuzz(platform, people[READER])
    after = fingerprint(platform)

    assert not run.crashes, "\n".join(run.crashes)
    assert len(run.answers) >= len(doc["paths"]), f"only {len(run.answers)} requests sent"
    errors = [str(a) for a in run.answers if a.status >= 500]
    assert not errors, f"{len(errors)} server errors:\n" + "\n".join(errors)
    assert after == before, f"the Reader's requests changed the platform: {changed(before, after)}"

    def error(answer: Answer) -> dict[str, Any]:
        body = answer.body.get("error") if isinstance(answer.body, dict) else None
        return body if isinstance(body, dict) else {}

    refusals = [str(a) for a in run.answers if a.status in (401, 403) and error(a).get("code") != "AuthorizationFailed"]
    assert not refusals, "refused other than AuthorizationFailed:\n" + "\n".join(refusals)

    operations = {f"{method.upper()} {path}": op for path, item in doc["paths"].items() for method, op in item.items()}
    undeclared = []
    for answer in run.answers:
        if answer.mode != "positive" or answer.status != 400:
            continue
        problem = error(answer)
        named = str(problem.get("details", {}).get("field", ""))
        message = str(problem.get("message", ""))
        if named in declared_fields(doc, operations[answer.operation]) and not any(m in message for m in UNDECLARABLE):
            undeclared.append(str(answer))
    assert not undeclared, (
        "schema-valid values refused though the document declares their rule (does the route check another?):\n"
        + "\n".join(undeclared)
    )


def test_the_fuzzer_with_no_token_gets_401_everywhere(platform: Platform, people: dict[Any, str | None]) -> None:
    before = fingerprint(platform)
    run, doc = fuzz(platform, people[NO_TOKEN])
    assert not run.crashes, "\n".join(run.crashes)
    assert len(run.answers) >= len(doc["paths"]), f"only {len(run.answers)} requests sent"
    # A body that is not JSON is refused by the parser, before any rule runs: for every caller alike
    # (tests/unit/test_permission_matrix.py checks that), so it tells this one nothing.
    unparsed = [a for a in run.answers if a.not_json and a.status == 400]
    others = [str(a) for a in run.answers if a.status != 401 and a not in unparsed]
    assert not others, f"{len(others)} of {len(run.answers)} answers without a token were not 401:\n" + "\n".join(
        others
    )
    bodies = {repr(a.body) for a in run.answers if a.status == 401}
    assert len(bodies) == 1, f"401s differ: {bodies}"
    assert len(unparsed) < len(run.answers) / 4, "few of the requests reached the rule"
    assert fingerprint(platform) == before
