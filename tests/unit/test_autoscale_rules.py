"""Autoscale rules: what a profile and a rule refuse, and what the engine decides from metric values.

Azure's semantics (any scale-out rule, all scale-in rules, the range first, cooldowns, no scale-in
on missing data) plus the flap guard that projects the scale-out rules onto the smaller count.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flexvm.errors import InvalidInput
from flexvm.model.autoscale import (
    PER_INSTANCE,
    PERCENT,
    SCALESET_METRICS,
    AutoscaleProfile,
    AutoscaleRule,
    Direction,
    Operator,
    contradictions,
    format_duration,
    rescale,
)
from flexvm.scaling.rules import evaluate
from tests.unit.autoscale_helpers import rule

NOW = 1_000_000.0


def measured(values: dict[str, float | None]) -> Callable[[AutoscaleRule], float | None]:
    """What the metrics store answered for each metric over the rules' windows."""
    return lambda r: values.get(r.metric)


PROFILE = AutoscaleProfile(min_count=1, max_count=10, default_count=2)
OUT = rule("increase", "gt", 70, id="out-cpu")
IN = rule("decrease", "lt", 30, id="in-cpu")


# --- the vocabulary ------------------------------------------------------------------------


def test_metric_sets_divide_the_vocabulary() -> None:
    assert set(SCALESET_METRICS) - PER_INSTANCE == {"requests_per_s"}
    assert {"cpu_percent", "cpu_wait_percent", "memory_used_percent"} == PERCENT
    assert "requests_per_instance_per_s" in PER_INSTANCE


def test_rescale_spreads_per_instance_work_and_leaves_totals() -> None:
    assert rescale("cpu_percent", 45.0, 3, 2) == pytest.approx(67.5)
    assert rescale("cpu_percent", 80.0, 3, 2) == 100.0  # a percent stops at 100
    assert rescale("net_rx_bytes_per_s", 1000.0, 2, 4) == 500.0
    assert rescale("requests_per_instance_per_s", 30.0, 2, 3) == pytest.approx(20.0)
    assert rescale("requests_per_s", 900.0, 3, 1) == 900.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("gt", Operator.GT), (">=", Operator.GE), ("GreaterThan", Operator.GT), ("lessthanorequal", Operator.LE)],
)
def test_operator_accepts_azure_names(text: str, expected: Operator) -> None:
    assert Operator.parse(text) is expected


def test_unknown_operator_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInput) as caught:
        rule("increase", "bigger", 70)
    assert caught.value.field == "operator"
    assert "'bigger'" in caught.value.message
    assert "gt, ge, lt, le, eq, ne" in caught.value.message


def test_rules_from_stored_strings_become_enums() -> None:
    stored = rule("Decrease", "LessThan", 30)
    assert stored.direction is Direction.DECREASE
    assert stored.operator is Operator.LT


# --- profile and rule checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "field", "words"),
    [
        (AutoscaleProfile(5, 3, 4), "min_count", "min (5) is larger than max (3)"),
        (AutoscaleProfile(-1, 3, 1), "min_count", "min (-1) cannot be negative"),
        (AutoscaleProfile(1, 3, 4), "default_count", "default (4) is outside min..max (1..3)"),
        (AutoscaleProfile(2, 3, 1), "default_count", "default (1) is outside min..max (2..3)"),
        (AutoscaleProfile(1, 1001, 2), "max_count", "limit of 1000"),
    ],
)
def test_profile_refuses_impossible_ranges(profile: AutoscaleProfile, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        profile.check()
    assert caught.value.field == field
    assert words in caught.value.message


def test_profile_accepts_a_fixed_count() -> None:
    AutoscaleProfile(3, 3, 3).check()


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as caught:
        rule("increase", "gt", 70, metric="Percentage CPU").check()
    assert caught.value.field == "metric"
    for name in SCALESET_METRICS:
        assert name in caught.value.message


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"threshold": 140}, "threshold", "140 is outside cpu_percent's range (0 to 100)"),
        ({"threshold": -5}, "threshold", "-5 is outside cpu_percent's range (0 to 100)"),
        ({"metric": "net_rx_bytes_per_s", "threshold": -1}, "threshold", "range (0 or more)"),
        ({"threshold": float("nan")}, "threshold", "finite"),
        ({"statistic": "p95"}, "statistic", "valid: avg, min, max"),
        ({"grain": 600}, "grain_seconds", "the grain (10m) cannot be longer than the window (5m)"),
        ({"grain": 0.5}, "grain_seconds", "at least 1 s"),
        ({"window": 2 * 86400}, "window_seconds", "at most 1 day"),
        ({"count": 0}, "count", "at least 1 instance"),
        ({"cooldown": -1}, "cooldown_seconds", "cannot be negative"),
    ],
)
def test_rule_refuses_what_cannot_mean_anything(changes: dict, field: str, words: str) -> None:
    arguments: dict = {"threshold": 70, **changes}
    threshold = arguments.pop("threshold")
    with pytest.raises(InvalidInput) as caught:
        rule("increase", "gt", threshold, **arguments).check()
    assert caught.value.field == field
    assert words in caught.value.message


def test_rule_accepts_a_large_byte_rate() -> None:
    rule("increase", "gt", 50_000_000, metric="disk_write_bytes_per_s").check()


def test_describe_reads_like_a_sentence() -> None:
    assert OUT.describe() == "scale out by 1 when avg cpu_percent over 5m (1m grain) > 70, cooldown 5m"
    wide = rule("decrease", "le", 12.5, count=2, cooldown=630, window=3600, grain=300)
    assert wide.describe() == "scale in by 2 when avg cpu_percent over 1h (5m grain) <= 12.5, cooldown 10m 30s"
    assert wide.key == wide.describe()  # no id: the description names it
    assert format_duration(130) == "2m 10s"


# --- contradictions ------------------------------------------------------------------------


def test_overlapping_out_and_in_rules_are_warned_about() -> None:
    warnings = contradictions([rule("increase", "gt", 50, id="out"), rule("decrease", "lt", 60, id="in")])
    assert len(warnings) == 1
    assert "'out'" in warnings[0] and "'in'" in warnings[0]
    assert "both fire at 55" in warnings[0]


def test_touching_inclusive_ranges_overlap_at_the_threshold() -> None:
    warnings = contradictions([rule("increase", "ge", 50), rule("decrease", "le", 50)])
    assert len(warnings) == 1
    assert "both fire at 50" in warnings[0]


def test_a_scale_in_threshold_too_near_the_scale_out_one_is_warned_about() -> None:
    warnings = contradictions([rule("increase", "gt", 60, id="out"), rule("decrease", "lt", 55, id="in")])
    assert len(warnings) == 1
    assert "removing one turns 55 into 82.5" in warnings[0]
    assert "below 40" in warnings[0]


def test_well_separated_rules_and_other_metrics_give_no_warning() -> None:
    assert contradictions([OUT, IN]) == []
    assert contradictions([rule("increase", "gt", 50), rule("decrease", "lt", 60, metric="memory_used_percent")]) == []
    assert contradictions([rule("increase", "gt", 50), rule("decrease", "lt", 60, statistic="max")]) == []


# --- evaluate: which rules act --------------------------------------------------------------


def test_any_scale_out_rule_is_enough() -> None:
    memory_out = rule("increase", "gt", 80, metric="memory_used_percent", id="out-mem")
    decision = evaluate(
        PROFILE, [OUT, memory_out], 3, measured({"cpu_percent": 40, "memory_used_percent": 90}), NOW, None
    )
    assert (decision.action, decision.target, decision.rule_id) == ("increase", 4, "out-mem")
    assert decision.reason == "scale out 3 -> 4: avg memory_used_percent over 5m is 90.0 (> 80)"
    assert decision.evidence == {"out-cpu": 40, "out-mem": 90}


def test_scale_in_needs_every_scale_in_rule() -> None:
    memory_in = rule("decrease", "lt", 40, metric="memory_used_percent", id="in-mem")
    one_fires = evaluate(
        PROFILE, [IN, memory_in], 4, measured({"cpu_percent": 10, "memory_used_percent": 60}), NOW, None
    )
    assert (one_fires.action, one_fires.target) == ("none", 4)
    assert "1 of 2 scale-in rules did (all must)" in one_fires.reason
    both_fire = evaluate(
        PROFILE, [IN, memory_in], 4, measured({"cpu_percent": 10, "memory_used_percent": 20}), NOW, None
    )
    assert (both_fire.action, both_fire.target) == ("decrease", 3)


def test_the_largest_scale_out_wins_and_the_smallest_scale_in() -> None:
    out_by_3 = rule("increase", "gt", 90, count=3, id="out-3")
    decision = evaluate(PROFILE, [OUT, out_by_3], 2, measured({"cpu_percent": 95}), NOW, None)
    assert (decision.target, decision.rule_id) == (5, "out-3")
    in_by_2 = rule("decrease", "lt", 20, count=2, id="in-2")
    decision = evaluate(PROFILE, [IN, in_by_2], 6, measured({"cpu_percent": 5}), NOW, None)
    assert (decision.target, decision.rule_id) == (5, "in-cpu")


def test_scale_out_wins_over_scale_in() -> None:
    # Contradictory rules (the warning's case): when both fire, out has priority.
    rules = [rule("increase", "gt", 50, id="out"), rule("decrease", "lt", 60, id="in")]
    decision = evaluate(PROFILE, rules, 3, measured({"cpu_percent": 55}), NOW, None)
    assert (decision.action, decision.target) == ("increase", 4)


def test_nothing_fires_between_the_thresholds() -> None:
    decision = evaluate(PROFILE, [OUT, IN], 3, measured({"cpu_percent": 50}), NOW, None)
    assert (decision.action, decision.current, decision.target, decision.rule_id) == ("none", 3, 3, None)
    assert decision.evidence == {"out-cpu": 50, "in-cpu": 50}


# --- evaluate: the range --------------------------------------------------------------------


def test_a_rule_at_max_is_held_and_a_large_step_is_capped() -> None:
    at_max = evaluate(PROFILE, [OUT], 10, measured({"cpu_percent": 95}), NOW, None)
    assert (at_max.action, at_max.target) == ("held", 10)
    assert at_max.reason.startswith("already at max (10)")
    capped = evaluate(PROFILE, [rule("increase", "gt", 70, count=5)], 8, measured({"cpu_percent": 95}), NOW, None)
    assert (capped.action, capped.target) == ("increase", 10)
    assert "capped at max 10" in capped.reason


def test_a_rule_at_min_is_held_and_a_large_step_stops_at_min() -> None:
    at_min = evaluate(PROFILE, [IN], 1, measured({"cpu_percent": 5}), NOW, None)
    assert (at_min.action, at_min.target) == ("held", 1)
    assert at_min.reason.startswith("already at min (1)")
    floored = evaluate(PROFILE, [rule("decrease", "lt", 30, count=5)], 3, measured({"cpu_percent": 5}), NOW, None)
    assert (floored.action, floored.target) == ("decrease", 1)


@pytest.mark.parametrize(("current", "action", "target"), [(0, "increase", 1), (14, "decrease", 10)])
def test_a_count_outside_the_range_is_moved_into_it_first(current: int, action: str, target: int) -> None:
    # Even with the metric pointing the other way and a cooldown running.
    cpu = 95 if action == "decrease" else 5
    decision = evaluate(PROFILE, [OUT, IN], current, measured({"cpu_percent": cpu}), NOW, NOW - 10)
    assert (decision.action, decision.target, decision.rule_id) == (action, target, None)
    assert ("below min (1)" if action == "increase" else "above max (10)") in decision.reason


# --- evaluate: missing data -----------------------------------------------------------------


def test_no_metrics_below_the_default_scales_up_to_it() -> None:
    profile = AutoscaleProfile(1, 10, 3)
    decision = evaluate(profile, [OUT, IN], 1, measured({}), NOW, None)
    assert (decision.action, decision.target) == ("increase", 3)
    assert decision.reason.startswith("no metrics for cpu_percent; holding at least the default count")
    assert decision.evidence == {"out-cpu": None, "in-cpu": None}


def test_no_metrics_above_the_default_never_scales_in() -> None:
    decision = evaluate(PROFILE, [OUT, IN], 6, measured({}), NOW, None)
    assert (decision.action, decision.target) == ("none", 6)
    assert "never scaling in without data" in decision.reason


def test_a_rule_without_data_cannot_fire() -> None:
    memory_in = rule("decrease", "lt", 40, metric="memory_used_percent", id="in-mem")
    decision = evaluate(PROFILE, [OUT, IN, memory_in], 5, measured({"cpu_percent": 10}), NOW, None)
    assert (decision.action, decision.target) == ("none", 5)
    assert decision.reason.endswith("no data for: in-mem")
    memory_out = rule("increase", "gt", 80, metric="memory_used_percent", id="out-mem")
    decision = evaluate(PROFILE, [memory_out, IN], 5, measured({"cpu_percent": 10}), NOW, None)
    assert (decision.action, decision.target) == ("decrease", 4)  # the silent out-rule does not block


# --- evaluate: cooldown ---------------------------------------------------------------------


def test_cooldown_holds_with_the_time_left_then_lets_the_rule_act() -> None:
    last = NOW - 170  # OUT's cooldown is 300 s: 130 s left
    held = evaluate(PROFILE, [OUT, IN], 3, measured({"cpu_percent": 80}), NOW, last)
    assert (held.action, held.target, held.rule_id) == ("held", 3, "out-cpu")
    assert held.reason.startswith("cooldown: 2m 10s left after the last scale action")
    assert "wants 3 -> 4" in held.reason
    after = evaluate(PROFILE, [OUT, IN], 3, measured({"cpu_percent": 80}), NOW + 130, last)
    assert (after.action, after.target) == ("increase", 4)


def test_the_last_actions_longer_cooldown_is_respected() -> None:
    quick_in = rule("decrease", "lt", 30, cooldown=60, id="in")
    # The last action's rule asked for 10 minutes; 5 have passed.
    held = evaluate(PROFILE, [OUT, quick_in], 4, measured({"cpu_percent": 10}), NOW, NOW - 300, 600)
    assert held.action == "held"
    assert held.reason.startswith("cooldown: 5m left")
    own_only = evaluate(PROFILE, [OUT, quick_in], 4, measured({"cpu_percent": 10}), NOW, NOW - 300)
    assert (own_only.action, own_only.target) == ("decrease", 3)


# --- evaluate: the flap guard ---------------------------------------------------------------


FLAPPY = [rule("increase", "gt", 60, id="out"), rule("decrease", "lt", 50, id="in")]


def test_flap_guard_holds_a_scale_in_that_would_trip_scale_out() -> None:
    decision = evaluate(PROFILE, FLAPPY, 3, measured({"cpu_percent": 45}), NOW, None)
    assert (decision.action, decision.target, decision.rule_id) == ("held", 3, "in")
    assert decision.reason == (
        "scale-in to 2 held: projected avg cpu_percent 67.5 would trip the scale-out rule (> 60)"
    )


def test_flap_guard_allows_a_scale_in_that_stays_below_scale_out() -> None:
    decision = evaluate(PROFILE, FLAPPY, 4, measured({"cpu_percent": 20}), NOW, None)
    assert (decision.action, decision.target) == ("decrease", 3)


def test_flap_guard_can_be_bypassed() -> None:
    decision = evaluate(PROFILE, FLAPPY, 3, measured({"cpu_percent": 45}), NOW, None, flap_guard=False)
    assert (decision.action, decision.target) == ("decrease", 2)


def test_flap_guard_takes_the_largest_safe_smaller_step() -> None:
    rules = [rule("increase", "gt", 60, id="out"), rule("decrease", "lt", 55, count=3, id="in")]
    # 50 % over 10: removing 3 gives 71.4, removing 2 gives 62.5, removing 1 gives 55.6.
    decision = evaluate(PROFILE, rules, 10, measured({"cpu_percent": 50}), NOW, None)
    assert (decision.action, decision.target) == ("decrease", 9)
    assert "not to 7: projected avg cpu_percent 71.4" in decision.reason


def test_flap_guard_leaves_set_wide_totals_alone() -> None:
    # 900 requests/s is the whole set's; fewer instances do not make it larger.
    rules = [rule("increase", "gt", 1000, metric="requests_per_s", id="out"), rule("decrease", "lt", 50, id="in")]
    decision = evaluate(PROFILE, rules, 3, measured({"cpu_percent": 20, "requests_per_s": 900}), NOW, None)
    assert (decision.action, decision.target) == ("decrease", 2)
    per_instance = [rule("increase", "gt", 400, metric="requests_per_instance_per_s"), rule("decrease", "lt", 50)]
    decision = evaluate(
        PROFILE, per_instance, 3, measured({"cpu_percent": 20, "requests_per_instance_per_s": 300}), NOW, None
    )
    assert (decision.action, decision.target) == ("held", 3)  # 300 per instance over 2 is 450
    assert "projected avg requests_per_instance_per_s 450.0" in decision.reason
