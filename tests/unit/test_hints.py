"""Remedies: services say what would let a refused request through in the domain's words, and each
edge words it for its readers.

Pins: a remedy is an option or an action, never both or neither, and reads back from details (also
what an older client does not know: nothing, rather than a crash); every option and action has a
wording at the CLI (a flag or a command) and at the API (a request field or a call), and neither
names the other's; the CLI appends the hint to the message (on a line of its own after a console's
tail); the API adds it to the details and leaves the message alone.
"""

from __future__ import annotations

import pytest

from flexvm.api import hints as api_hints
from flexvm.cli import hints as cli_hints
from flexvm.errors import Action, InvalidInput, InvalidState, OperationTimeout, Option, Remedy

REMEDIES = [Remedy(option=o) for o in Option] + [
    Remedy(action=a, subject={"vm": "web1", "scale_set": "web", "image": "tiny"}) for a in Action
]


def test_a_remedy_is_an_option_or_an_action() -> None:
    with pytest.raises(TypeError):
        Remedy()
    with pytest.raises(TypeError):
        Remedy(option=Option.COLD, action=Action.ADD_HOST)


@pytest.mark.parametrize("remedy", REMEDIES, ids=str)
def test_a_remedy_reads_back_from_an_errors_details(remedy: Remedy) -> None:
    err = InvalidState("refused", details={"other": 1}, remedy=remedy)
    assert err.details["other"] == 1
    assert Remedy.from_dict(err.to_dict()["details"]["remedy"]) == remedy == err.remedy


@pytest.mark.parametrize("raw", [None, "cold", {}, {"option": "teleport"}, {"action": "pray"}])
def test_what_this_version_does_not_know_is_no_remedy(raw: object) -> None:
    assert Remedy.from_dict(raw) is None


def test_invalid_input_carries_a_remedy_beside_its_field() -> None:
    err = InvalidInput("instances", "outside the range", remedy=Remedy(action=Action.ADD_HOST))
    assert err.details == {"field": "instances", "remedy": {"action": "add_host"}}


@pytest.mark.parametrize("remedy", REMEDIES, ids=str)
def test_every_remedy_has_a_cli_and_an_api_wording(remedy: Remedy) -> None:
    cli = remedy.worded(cli_hints.OPTIONS, cli_hints.ACTIONS)
    api = remedy.worded(api_hints.OPTIONS, api_hints.ACTIONS)
    assert "flexvm " in cli or " --" in cli
    assert "/v1/" in api or ": true" in api
    assert "--" not in api and "flexvm " not in api, "the API never names a CLI flag or command"
    assert "/v1/" not in cli


def test_the_wordings_name_the_subject() -> None:
    console = Remedy(action=Action.READ_CONSOLE, subject={"vm": "web1"})
    assert console.worded(cli_hints.OPTIONS, cli_hints.ACTIONS) == "see `flexvm vm console web1`"
    assert console.worded(api_hints.OPTIONS, api_hints.ACTIONS) == "read its console: GET /v1/vms/web1/console"
    unnamed = Remedy(action=Action.ADD_SCALE_SET_INSTANCE)  # a subject that lacks the name
    assert "`flexvm scaleset scale SCALE_SET --instances N`" in unnamed.worded(cli_hints.OPTIONS, cli_hints.ACTIONS)


def test_the_cli_appends_the_hint_and_the_message_alone_without_one() -> None:
    refused = InvalidState("it needs a restart", remedy=Remedy(option=Option.ALLOW_RESTART))
    assert cli_hints.explain(refused) == "it needs a restart; add --allow-restart to resize it with a restart"
    assert cli_hints.explain(InvalidState("plain")) == "plain"
    slow = OperationTimeout(
        "not ready. Console tail:\nline 1\nline 2", remedy=Remedy(action=Action.READ_CONSOLE, subject={"vm": "a"})
    )
    assert cli_hints.explain(slow) == "not ready. Console tail:\nline 1\nline 2\nsee `flexvm vm console a`"


def test_the_api_adds_the_hint_to_the_details() -> None:
    details = InvalidState("x", details={"ceilings": "c"}, remedy=Remedy(option=Option.ALLOW_RESTART)).details
    assert api_hints.with_hint(details) == {
        "ceilings": "c",
        "remedy": {"option": "allow_restart"},
        "hint": "send allow_restart: true to resize it with a restart",
    }
    assert api_hints.with_hint({"field": "size"}) == {"field": "size"}
    assert api_hints.operation_error(None) is None
    stored = OperationTimeout("slow", remedy=Remedy(action=Action.READ_CONSOLE, subject={"vm": "a"})).to_dict()
    shown = api_hints.operation_error(stored)
    assert shown is not None and shown["message"] == "slow"
    assert shown["details"]["hint"] == "read its console: GET /v1/vms/a/console"
