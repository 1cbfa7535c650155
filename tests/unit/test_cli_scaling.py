"""`flexvm scaleset …` and `flexvm autoscale …` against a real server in this process (fake host).

Pins: scaleset create waits and shows the set; list and instances print tables; `-o json` prints
the API's own shapes; scale and delete wait; autoscale set/off; rule add prints the id, the
description and warnings; rule list/remove; history says when there is nothing, then prints a
table; simulate prints the timeline (and its JSON); errors are one 'error:' line and exit 1.

Sets here have no load balancer, so no HAProxy is ever started.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from flexvm.drivers.fake import FakeDriver
from flexvm.platform import Platform
from tests.unit import test_cli
from tests.unit.test_cli import Cli, assert_clean_error

# test_cli's fixtures: the CLI's environment pointed at the in-process server, and a client of it.
cli_env = test_cli.cli_env
http = test_cli.http
flexvm = test_cli.flexvm

RULE = ["--metric", "cpu_percent", "--operator", "gt", "--threshold", "70", "--action", "increase"]


@pytest.fixture
def web(flexvm: Cli, image: str) -> str:
    """Scale set 'web': 2 Standard_B1s instances of 'img', no load balancer, one fault domain (one host)."""
    flexvm.ok(
        "scaleset", "create", "web", "-s", "Standard_B1s", "-i", "img", "--instances", "2", "--fault-domains", "1"
    )
    return "web"


def test_create_waits_and_shows_the_set(flexvm: Cli, fake_host: FakeDriver, image: str) -> None:
    out = flexvm.ok(
        "scaleset", "create", "web", "-s", "Standard_B1s", "-i", "img", "--instances", "2", "--fault-domains", "1"
    )
    assert re.search(r"instances\s+2 wanted \(2 serving\)", out), out
    assert re.search(r"load balancer\s+none", out), out
    assert re.search(r"autoscale\s+off", out), out
    assert sorted(fake_host.host.guests) == ["web-0", "web-1"]


def test_tables_and_json(flexvm: Cli, http: httpx.Client, web: str) -> None:
    listed = flexvm.ok("scaleset", "list")
    assert re.search(r"web\s+Standard_B1s\s+img\s+2\s+2\s+none\s+off\s+v1", listed), listed
    assert json.loads(flexvm.ok("scaleset", "list", "-o", "json")) == http.get("/v1/scalesets").json()
    assert json.loads(flexvm.ok("scaleset", "show", "web", "-o", "json")) == http.get("/v1/scalesets/web").json()

    instances = flexvm.ok("scaleset", "instances", "web")
    assert re.search(r"NAME\s+STATE\s+HOST\s+IP\s+POWER\s+LB\s+CURRENT MODEL", instances), instances
    assert re.search(r"web-0\s+serving\s+local\s+\S+\s+running\s+-\s+yes", instances), instances
    as_json = json.loads(flexvm.ok("scaleset", "instances", "web", "-o", "json"))
    assert as_json == http.get("/v1/scalesets/web/instances").json()


def test_scale_update_and_delete_wait(flexvm: Cli, fake_host: FakeDriver, web: str) -> None:
    out = flexvm.ok("scaleset", "scale", "web", "--instances", "3")
    assert re.search(r"instances\s+3 wanted \(3 serving\)", out), out
    out = flexvm.ok("scaleset", "update", "web", "--max-unavailable", "2")
    assert re.search(r"max unavailable\s+2", out), out
    assert "deleted scale set web" in flexvm.ok("scaleset", "delete", "web")
    assert fake_host.host.guests == {}
    assert_clean_error(flexvm("scaleset", "show", "web"), "scale set 'web' not found")


def test_no_wait_prints_the_operation(flexvm: Cli, http: httpx.Client, image: str) -> None:
    out = flexvm.ok("scaleset", "create", "web", "-s", "Standard_B1s", "-i", "img", "--instances", "1", "--no-wait")
    assert out.startswith("operation ") and "scaleset.create web" in out, out
    operation_id = out.split()[1]
    flexvm.ok("operation", "wait", operation_id)
    assert http.get("/v1/scalesets/web").json()["instances"] == {"serving": 1}


def test_errors_are_one_line(flexvm: Cli, image: str) -> None:
    result = flexvm(
        "scaleset", "create", "web", "-s", "Standard_B1s", "-i", "img", "--instances", "1", "--lb-port", "80"
    )
    assert_clean_error(result, "lb_port: a load balancer needs instances on a host network")
    assert "or try the lab: `flexvm lab up --hosts 2`" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_scaling_outside_the_autoscale_range_names_the_command_that_changes_it(flexvm: Cli, web: str) -> None:
    flexvm.ok("autoscale", "set", "web", "--min", "1", "--max", "3", "--default", "2")
    result = flexvm("scaleset", "scale", "web", "--instances", "5")
    assert_clean_error(result, "instances: 5 is outside the autoscale range 1-3; change the range first with")
    assert "`flexvm autoscale set web --min N --max N --default N`" in result.stderr


def test_autoscale_set_off_and_rules(flexvm: Cli, http: httpx.Client, web: str) -> None:
    out = flexvm.ok("autoscale", "set", "web", "--min", "1", "--max", "10", "--default", "2")
    assert "autoscale on for web: 1-10 instances, default 2" in out
    assert_clean_error(flexvm("autoscale", "set", "web", "--min", "5", "--max", "2", "--default", "3"), "min: min (5)")

    out = flexvm.ok("autoscale", "rule", "add", "web", *RULE, "--window", "10m", "--cooldown", "10m")
    assert "rule r1: scale out by 1 when avg cpu_percent over 10m (1m grain) > 70, cooldown 10m" in out
    assert "warning" not in out
    out = flexvm.ok(
        "autoscale", "rule", "add", "web", "--metric", "cpu_percent", "--operator", "lt", "--threshold", "80",
        "--action", "decrease",
    )  # fmt: skip
    assert "rule r2: scale in by 1" in out
    assert re.search(r"warning: scale-out rule 'r1' .* both fire", out), out
    assert_clean_error(
        flexvm("autoscale", "rule", "add", "web", *RULE[:4], "--threshold", "140", *RULE[6:]), "threshold"
    )

    listed = flexvm.ok("autoscale", "rule", "list", "web")
    assert re.search(r"r1\s+scale out by 1 when", listed) and re.search(r"r2\s+scale in by 1 when", listed), listed
    rules = json.loads(flexvm.ok("autoscale", "rule", "list", "web", "-o", "json"))
    assert rules == http.get("/v1/scalesets/web/autoscale/rules").json()
    assert "removed rule r2 from web" in flexvm.ok("autoscale", "rule", "remove", "web", "r2")
    assert [r["id"] for r in http.get("/v1/scalesets/web/autoscale/rules").json()] == ["r1"]

    assert "autoscale off for web" in flexvm.ok("autoscale", "off", "web")
    assert http.get("/v1/scalesets/web").json()["autoscale"] is None


def test_history(flexvm: Cli, platform: Platform, web: str) -> None:
    assert "no autoscale events for web yet" in flexvm.ok("autoscale", "history", "web")
    flexvm.ok("autoscale", "set", "web", "--min", "3", "--max", "5", "--default", "3")
    platform.autoscale.evaluate("web")  # 2 is below min: scaled out to 3
    deadline = time.monotonic() + 30
    while platform.scale_sets.get("web").active_operation_id is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    out = flexvm.ok("autoscale", "history", "web")
    assert re.search(r"TIME \(UTC\)\s+ACTION\s+COUNT\s+RULE\s+REASON", out), out
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+increase\s+2 -> 3\s+-\s+2 is below min", out), out
    [event] = json.loads(flexvm.ok("autoscale", "history", "web", "--limit", "5", "-o", "json"))
    assert (event["current"], event["target"]) == (2, 3)


def test_simulate_prints_the_timeline(flexvm: Cli, web: str, tmp_path: Path) -> None:
    flexvm.ok("autoscale", "set", "web", "--min", "1", "--max", "6", "--default", "2")
    flexvm.ok("autoscale", "rule", "add", "web", *RULE)
    out = flexvm.ok("autoscale", "simulate", "web", "--synthetic", "day", "--step", "1m")
    assert re.search(r"^\d\d:\d\d:\d\d\s+\d+ -> \d+\s+increase\s+scale out", out, re.MULTILINE), out
    assert re.search(r"^count 00:00 \S+ 00:00  \(2\.\.\d instances\)", out, re.MULTILINE), out
    assert "flaps: " in out and "instance-minutes: " in out

    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "profile": {"min": 1, "max": 3, "default": 1},
                "rules": [{"metric": "cpu_percent", "operator": "gt", "threshold": 50, "action": "increase"}],
            }
        )
    )
    result = json.loads(
        flexvm.ok("autoscale", "simulate", "web", "--synthetic", "day", "--rules", str(rules), "-o", "json")
    )
    assert result["max_count"] <= 3 and result["timeline"] and result["text"]

    rules.write_text(json.dumps([{"metric": "cpu_percent", "operator": "gt", "threshold": 500, "action": "increase"}]))
    assert_clean_error(
        flexvm("autoscale", "simulate", "web", "--synthetic", "day", "--rules", str(rules)), "rules.0.threshold"
    )
    rules.write_text("not json")
    assert_clean_error(flexvm("autoscale", "simulate", "web", "--rules", str(rules)), "rules: cannot read")
    assert flexvm("autoscale", "simulate", "web", "--synthetic", "week").returncode == 2
