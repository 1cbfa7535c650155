"""The backtest: recorded metrics replayed against autoscale rules, with the load conserved.

Recorded series, not mocks: small hand-made ones where the arithmetic must come out exactly, and
the seeded synthetic day for the shape of a whole day (grow in the morning, shrink at night).
"""

from __future__ import annotations

import pytest

from flexvm.errors import InvalidInput
from flexvm.model.autoscale import AutoscaleProfile
from flexvm.scaling.backtest import Flap, render_timeline, simulate, synthetic_day
from tests.unit.autoscale_helpers import rule

HOUR = 3600.0
DAY = 86400.0
PROFILE = AutoscaleProfile(min_count=1, max_count=10, default_count=2)


def steady(value: float, *, every: float = 15.0, until: float = 1200.0) -> list[tuple[float, float]]:
    """A flat recorded series from a few minutes before 0 (so the first windows have data)."""
    return [(index * every, value) for index in range(int(-300 // every), int(until // every))]


# The rules the synthetic day is meant for: Azure's own example thresholds.
DAY_RULES = [
    rule("increase", "gt", 70, window=300, cooldown=300, id="out"),
    rule("decrease", "lt", 30, window=600, cooldown=600, id="in"),
]


# --- the synthetic day ----------------------------------------------------------------------


def test_synthetic_day_has_a_quiet_night_and_a_busy_midday() -> None:
    recorded, instances = synthetic_day(0.0)
    cpu = recorded["cpu_percent"]
    assert len(cpu) == 1440
    assert instances == [(0.0, 2.0)]
    night = [v for t, v in cpu if t < 6 * HOUR and not 3 * HOUR <= t < 3 * HOUR + 120]
    midday = [v for t, v in cpu if 12 * HOUR <= t < 14 * HOUR]
    assert 18 < sum(night) / len(night) < 22
    assert 83 < sum(midday) / len(midday) < 87
    assert all(0 <= v <= 100 for _, v in cpu)
    # The night spike: two minutes well above the night's level.
    assert [round(v) for t, v in cpu if 3 * HOUR <= t < 3 * HOUR + 180] == [56, 55, 23]
    # Requests follow the load: the set-wide rate is the per-instance one times the 2 instances.
    assert recorded["requests_per_s"][720][1] == pytest.approx(2 * recorded["requests_per_instance_per_s"][720][1])


def test_synthetic_day_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    assert synthetic_day(0.0) == synthetic_day(0.0)
    assert synthetic_day(0.0)[0]["cpu_percent"] != synthetic_day(0.0, noise_seed=2)[0]["cpu_percent"]


# --- a day under sensible rules -------------------------------------------------------------


def test_a_day_grows_in_the_morning_and_shrinks_at_night() -> None:
    recorded, instances = synthetic_day(0.0)
    backtest = simulate(PROFILE, DAY_RULES, recorded, instances, 0.0, DAY, 60.0)
    changes = [(t, d.current, d.target) for t, _, d in backtest.timeline if d.target != d.current]
    assert changes == [
        (300.0, 2, 1),  # the quiet night needs one instance (once half the 10-minute window is measured)
        (25680.0, 1, 2),  # 07:08, the morning ramp
        (34740.0, 2, 3),  # 09:39
        (70320.0, 3, 2),  # 19:32, the evening decay
        (74160.0, 2, 1),  # 20:36
    ]
    assert (backtest.min_count, backtest.max_count, backtest.actions, backtest.flaps) == (1, 3, 5, [])
    assert len(backtest.counts) == 1441
    assert backtest.instance_minutes == pytest.approx(2846.0)
    assert backtest.recorded_instance_minutes == pytest.approx(2880.0)
    # The night spike at 03:00 is smoothed away by the 5-minute window: no action then.
    assert not [t for t, _, _ in changes if 3 * HOUR <= t < 4 * HOUR]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_day_never_leaves_the_range(seed: int) -> None:
    # A range too narrow for the day: the midday load presses against max and is held there.
    profile = AutoscaleProfile(min_count=1, max_count=2, default_count=1)
    recorded, instances = synthetic_day(0.0, noise_seed=seed)
    backtest = simulate(profile, DAY_RULES, recorded, instances, 0.0, DAY, 60.0)
    assert {count for _, count in backtest.counts} == {1, 2}
    reasons = [d.reason for _, _, d in backtest.timeline if d.action == "held"]
    assert any(reason.startswith("already at max (2)") for reason in reasons)


def test_the_timeline_keeps_actions_holds_and_both_ends() -> None:
    recorded, instances = synthetic_day(0.0)
    backtest = simulate(PROFILE, DAY_RULES, recorded, instances, 0.0, DAY, 60.0)
    assert backtest.timeline[0][0] == 0.0
    assert backtest.timeline[-1][0] == DAY
    middle = backtest.timeline[1:-1]
    assert middle and all(d.action != "none" for _, _, d in middle)
    assert all(count == d.target for _, count, d in backtest.timeline)


def test_render_timeline_shows_each_action_the_count_strip_and_the_flaps() -> None:
    recorded, instances = synthetic_day(0.0)
    text = render_timeline(simulate(PROFILE, DAY_RULES, recorded, instances, 0.0, DAY, 60.0))
    lines = text.splitlines()
    assert any(line.startswith("07:08:00    1 -> 2    increase  scale out 1 -> 2: avg cpu_percent") for line in lines)
    assert any(line.startswith("20:36:00    2 -> 1    decrease") for line in lines)
    assert lines[-2].startswith("count 00:00 ")
    assert lines[-2].endswith(" 00:00  (1..3 instances)")
    assert lines[-1] == "flaps: 0   actions: 5   instance-minutes: 2846 (recorded: 2880)"


# --- flaps ----------------------------------------------------------------------------------


def test_flap_detector_counts_each_change_of_direction() -> None:
    # 45 % on 3 instances; out above 60, in below 50, no cooldown, a one-minute window: without
    # the guard, removing one gives 67.5 %, which adds it back, which gives 45 % again...
    rules = [rule("increase", "gt", 60, window=60, cooldown=0), rule("decrease", "lt", 50, window=60, cooldown=0)]
    arguments = ({"cpu_percent": steady(45.0)}, [(-1000.0, 3.0)], 0.0, 600.0, 60.0)
    unguarded = simulate(PROFILE, rules, *arguments, initial=3, flap_guard=False, flap_window=90)
    assert [count for _, count in unguarded.counts] == [2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2]
    assert unguarded.actions == 11
    assert len(unguarded.flaps) == 10
    assert unguarded.flaps[0] == Flap(0.0, 3, 2, 60.0, 2, 3)
    assert [flap.kind for flap in unguarded.flaps[:2]] == ["in-out", "out-in"]
    guarded = simulate(PROFILE, rules, *arguments, initial=3, flap_window=90)
    assert (guarded.actions, guarded.flaps) == (0, [])
    assert all(
        d.reason.startswith("scale-in to 2 held: projected avg cpu_percent 67.5") for _, _, d in guarded.timeline
    )


def test_flaps_further_apart_than_the_window_are_not_flaps() -> None:
    rules = [rule("increase", "gt", 60, window=60, cooldown=0), rule("decrease", "lt", 50, window=60, cooldown=0)]
    arguments = ({"cpu_percent": steady(45.0)}, [(-1000.0, 3.0)], 0.0, 600.0, 60.0)
    backtest = simulate(PROFILE, rules, *arguments, initial=3, flap_guard=False, flap_window=59)
    assert (backtest.actions, backtest.flaps) == (11, [])


def test_close_thresholds_without_cooldown_flap_all_day_unless_guarded() -> None:
    recorded, instances = synthetic_day(0.0)
    rules = [rule("increase", "gt", 60, cooldown=0, id="out"), rule("decrease", "lt", 55, cooldown=0, id="in")]
    unguarded = simulate(PROFILE, rules, recorded, instances, 0.0, DAY, 60.0, flap_guard=False)
    guarded = simulate(PROFILE, rules, recorded, instances, 0.0, DAY, 60.0)
    assert unguarded.flap_window == 600.0  # twice the longest cooldown + window
    assert (unguarded.actions, len(unguarded.flaps)) == (709, 178)
    assert (guarded.actions, len(guarded.flaps)) == (13, 5)
    # The few that remain come from the window's lag while the load ramps, not from the steady state.
    assert guarded.instance_minutes < unguarded.instance_minutes


# --- how the load is replayed ---------------------------------------------------------------


def test_per_instance_load_is_spread_over_the_simulated_count() -> None:
    # 80 % on 2 recorded instances is 160 %-instances: 53.3 % on 3, so one step out is enough.
    out = rule("increase", "gt", 70, window=60, cooldown=0)
    backtest = simulate(PROFILE, [out], {"cpu_percent": steady(80.0)}, [(-1000.0, 2.0)], 0.0, 600.0, 60.0)
    assert [count for _, count in backtest.counts] == [3] * 11
    assert backtest.timeline[0][2].evidence == {out.key: 80.0}
    assert backtest.timeline[-1][2].evidence[out.key] == pytest.approx(160 / 3)


def test_set_wide_totals_do_not_shrink_with_more_instances() -> None:
    out = rule("increase", "gt", 500, metric="requests_per_s", window=60, cooldown=120)
    backtest = simulate(PROFILE, [out], {"requests_per_s": steady(800.0)}, [(-1000.0, 2.0)], 0.0, 600.0, 60.0)
    # The total never drops below the threshold, so the set climbs every cooldown until max.
    assert [count for _, count in backtest.counts] == [3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8]


def test_a_provision_delay_makes_a_rule_without_cooldown_overshoot() -> None:
    out = rule("increase", "gt", 70, window=60, cooldown=0)
    arguments = ({"cpu_percent": steady(80.0)}, [(-1000.0, 2.0)], 0.0, 600.0, 60.0)
    instant = simulate(PROFILE, [out], *arguments)
    delayed = simulate(PROFILE, [out], *arguments, provision_delay=180.0)
    assert instant.max_count == 3
    # New instances take 3 minutes to share the load; meanwhile the rule keeps seeing 80 %.
    assert [count for _, count in delayed.counts] == [3, 4, 5, 6, 6, 6, 6, 6, 6, 6, 6]


def test_statistic_is_taken_per_grain_then_over_the_window() -> None:
    # One 15-second burst to 100 % in a quiet 5 minutes: the max sees it, the average does not.
    series = steady(20.0)
    series = [(t, 100.0 if t == -60.0 else v) for t, v in series]
    max_rule = rule("increase", "gt", 90, statistic="max", cooldown=600, id="max")
    avg_rule = rule("increase", "gt", 90, statistic="avg", cooldown=600, id="avg")
    backtest = simulate(PROFILE, [max_rule, avg_rule], {"cpu_percent": series}, [(-1000.0, 2.0)], 0.0, 0.0, 60.0)
    decision = backtest.timeline[0][2]
    assert decision.evidence["max"] == 100.0
    # Four one-minute buckets average 20; the burst's bucket averages (100 + 3 × 20) / 4 = 40.
    assert decision.evidence["avg"] == pytest.approx((4 * 20 + 40) / 5)
    assert (decision.action, decision.rule_id) == ("increase", "max")


def test_a_metric_never_recorded_counts_as_missing_data() -> None:
    out = rule("increase", "gt", 70, metric="memory_used_percent")
    backtest = simulate(PROFILE, [out], {"cpu_percent": steady(99.0)}, [(-1000.0, 2.0)], 0.0, 300.0, 60.0, initial=1)
    assert [count for _, count in backtest.counts] == [2] * 6  # up to the default, no further
    assert backtest.timeline[0][2].reason.startswith("no metrics for memory_used_percent")


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"step": 0.0}, "step"), ({"end": -1.0}, "end"), ({"recorded_instances": []}, "recorded_instances")],
)
def test_simulate_refuses_impossible_inputs(changes: dict, field: str) -> None:
    arguments: dict = {
        "recorded": {"cpu_percent": steady(50.0)},
        "recorded_instances": [(0.0, 2.0)],
        "start": 0.0,
        "end": 600.0,
        "step": 60.0,
        **changes,
    }
    with pytest.raises(InvalidInput) as caught:
        simulate(PROFILE, DAY_RULES, **arguments)
    assert caught.value.field == field
