"""Durations and moments as people write them, parsed by one rule that the CLI (through the API),
the API and the services share, and the span a backtest runs over.

Pins: '30s', '5m', '1h', '7d', '90s' and plain seconds; zero refused except for a cooldown; 'now',
'-1d', unix seconds and ISO 8601 (UTC unless it says otherwise); each refusal names its field. A
backtest by default covers the last hour; a synthetic one a whole day from a midnight; 'to' must
come after 'from'. The CLI's `autoscale simulate --from -1d` and a '0s' cooldown reach that rule.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from flexvm.errors import InvalidInput
from flexvm.model.autoscale import AutoscaleRule
from flexvm.model.times import parse_cooldown, parse_duration, parse_moment
from flexvm.monitor import query
from flexvm.scaling.backtest import Span, simulation_span
from tests.unit import test_cli
from tests.unit.test_cli import Cli, assert_clean_error

cli_env = test_cli.cli_env
flexvm = test_cli.flexvm

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z
MIDNIGHT = 1_714_521_600.0  # 2024-05-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("90s", 90), ("5m", 300), ("1.5m", 90), ("1h", 3600), ("7d", 604800), (42, 42)]
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text, "window") == seconds


@pytest.mark.parametrize("text", ["5", "5 minutes", "", "-5m", "m", float("inf")])
def test_what_is_not_a_duration_names_the_field(text: str | float) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(text, "window")
    assert caught.value.field == "window"


def test_zero_is_a_cooldown_but_no_other_duration() -> None:
    assert [parse_cooldown(t) for t in ("0s", "0", "0.0m", 0, "90s")] == [0, 0, 0, 0, 90]
    with pytest.raises(InvalidInput, match="window: must be longer than zero"):
        parse_duration("0s", "window")
    with pytest.raises(InvalidInput, match="cooldown: cannot be negative"):
        parse_cooldown(-1)


def test_the_monitor_and_the_model_share_the_rule() -> None:
    assert query.parse_duration is parse_duration


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("now", NOW),
        (" NOW ", NOW),
        ("-1d", NOW - 86400),
        ("-90s", NOW - 90),
        ("1714521600", MIDNIGHT),
        (MIDNIGHT, MIDNIGHT),
        ("2024-05-01T00:00:00Z", MIDNIGHT),
        ("2024-05-01T00:00:00", MIDNIGHT),  # UTC unless it says otherwise
        ("2024-05-01T02:00:00+02:00", MIDNIGHT),
    ],
)
def test_moments(text: str | float, moment: float) -> None:
    assert parse_moment(text, "from", now=NOW, default=0.0) == moment


@pytest.mark.parametrize("text", ["yesterday", "-1 day", "-1x", "nan", "-5"])
def test_what_is_not_a_moment_names_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_moment(text, "from", now=NOW, default=0.0)
    assert caught.value.field == "from"


def test_no_moment_is_the_default() -> None:
    assert parse_moment(None, "to", now=NOW, default=123.0) == 123.0


def test_a_backtest_covers_the_last_hour_by_default() -> None:
    assert simulation_span(None, None, "15s", synthetic=False, now=NOW) == Span(NOW - 3600, NOW, 15.0)
    assert simulation_span("-1d", "now", "5m", synthetic=False, now=NOW) == Span(NOW - 86400, NOW, 300.0)


def test_a_synthetic_backtest_is_a_day_from_a_midnight() -> None:
    assert simulation_span(None, "-1h", "1m", synthetic=True, now=NOW) == Span(MIDNIGHT, MIDNIGHT + 86400, 60.0)
    given = simulation_span("2024-04-30T00:00:00Z", None, 60, synthetic=True, now=NOW)
    assert (given.start, given.end) == (MIDNIGHT - 86400, MIDNIGHT)


def test_a_backtest_must_end_after_it_starts_and_step_forward() -> None:
    with pytest.raises(InvalidInput) as caught:
        simulation_span("-1h", "-2h", "15s", synthetic=False, now=NOW)
    assert caught.value.field == "to"
    with pytest.raises(InvalidInput) as caught:
        simulation_span(None, None, "0s", synthetic=False, now=NOW)
    assert caught.value.field == "step"


def test_a_rule_as_written_reads_its_durations() -> None:
    rule = AutoscaleRule.written(
        metric="cpu_percent",
        statistic="avg",
        grain="30s",
        window="5m",
        operator="gt",
        threshold=70,
        action="increase",
        count=1,
        cooldown="0s",
    )
    assert (rule.grain_seconds, rule.window_seconds, rule.cooldown_seconds) == (30, 300, 0)
    with pytest.raises(InvalidInput) as caught:
        AutoscaleRule.written(
            metric="cpu_percent",
            statistic="avg",
            grain="1m",
            window="soon",
            operator="gt",
            threshold=70,
            action="increase",
            count=1,
            cooldown="5m",
        )
    assert caught.value.field == "window"


# --- the CLI reaches the same rule through the API ---------------------------------------------


@pytest.fixture
def web(flexvm: Cli, image: str) -> str:
    flexvm.ok("scaleset", "create", "web", "-s", "Standard_B1s", "-i", "img", "--instances", "1")
    flexvm.ok("autoscale", "set", "web", "--min", "1", "--max", "4", "--default", "1")
    return "web"


def test_the_cli_reads_times_by_the_same_rule(flexvm: Cli, web: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rule = {"metric": "cpu_percent", "operator": "gt", "threshold": 70, "action": "increase", "cooldown": "0s"}
    rules.write_text(json.dumps([rule]))
    day = json.loads(
        flexvm.ok("autoscale", "simulate", "web", "--synthetic", "day", "--rules", str(rules), "-o", "json")
    )
    midnight = time.time() // 86400 * 86400
    assert day["end"] - day["start"] == 86400 and day["start"] in (midnight, midnight - 86400)
    assert_clean_error(flexvm("autoscale", "simulate", "web", "--from", "yesterday"), "from: 'yesterday' is not a time")
    assert_clean_error(flexvm("autoscale", "simulate", "web", "--from", "-1d", "--to", "-2d"), "to: must be after")
    assert_clean_error(flexvm("autoscale", "simulate", "web", "--step", "0s"), "step: must be longer than zero")
    assert_clean_error(
        flexvm(
            "autoscale",
            "rule",
            "add",
            "web",
            "--metric",
            "cpu_percent",
            "--operator",
            "gt",
            "--threshold",
            "70",
            "--action",
            "increase",
            "--window",
            "5",
        ),
        "window: '5' is not",
    )
