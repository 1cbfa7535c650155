"""The CLI of many people: the issue's own commands, run as an admin and then as the user they make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TOKEN
from tests.unit.test_cli import Cli, cli_env, flexvm  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`project use` writes here, not into the home of whoever runs the tests."""
    monkeypatch.setenv("FLEXVM_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("FLEXVM_PROJECT", raising=False)
    return tmp_path / "config"


def test_an_admin_makes_a_team_and_its_member_works_in_it(
    flexvm: Cli,  # noqa: F811
    image: str,
    monkeypatch: pytest.MonkeyPatch,
    own_config: Path,
) -> None:
    assert "team-a created" in flexvm.ok("project", "create", "team-a", "--quota-vcpus", "4", "--quota-memory", "8G")
    flexvm.ok("user", "create", "alice")
    assert "alice is Contributor on project team-a" in flexvm.ok(
        "role", "assign", "--user", "alice", "--role", "Contributor", "--project", "team-a"
    )
    made = json.loads(
        flexvm.ok("token", "create", "--user", "alice", "--name", "laptop", "--expires", "30d", "-o", "json")
    )
    assert made["token"].startswith("flexvm_") and made["user"] == "alice"

    monkeypatch.setenv("FLEXVM_TOKEN", made["token"])
    assert "alice" in flexvm.ok("whoami")
    flexvm.ok("vm", "create", "web1", "--project", "team-a", "--size", "Standard_B1s", "--image", "img")
    shown = flexvm.ok("project", "show", "team-a")
    assert "1 of 4" in shown  # vCPUs used of the limit
    # Without --project the CLI works in `default`, where alice holds no role: not found, as if absent.
    refused = flexvm("vm", "list")
    assert refused.returncode == 1 and "project 'default' not found" in refused.stderr
    flexvm.ok("project", "use", "team-a")
    assert (own_config / "project").read_text().strip() == "team-a"
    assert "web1" in flexvm.ok("vm", "list")
    # Hosts are the admin's.
    denied = flexvm("host", "list")
    assert denied.returncode == 1 and "platform" in denied.stderr

    monkeypatch.setenv("FLEXVM_TOKEN", TOKEN)  # the admin again
    trail = flexvm.ok("audit", "--project", "team-a")
    assert "create_vm" in trail and "alice" in trail
    tokens = flexvm.ok("token", "list", "--user", "alice")
    assert made["id"] in tokens and made["token"] not in tokens
    flexvm.ok("token", "revoke", made["id"])
    monkeypatch.setenv("FLEXVM_TOKEN", made["token"])
    gone = flexvm("vm", "list")
    assert gone.returncode == 1 and "bearer token" in gone.stderr


def test_bad_input_names_the_option(flexvm: Cli) -> None:  # noqa: F811
    result = flexvm("vm", "list", "--project", "Bad.Name")
    assert result.returncode == 1 and "project" in result.stderr
    result = flexvm("role", "assign", "--user", "x", "--role", "Reader", "--project", "p", "--platform")
    assert result.returncode == 1 and "not both" in result.stderr
