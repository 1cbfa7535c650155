"""The autoscale rule engine: one pure function from a set's count and metric values to a Decision.

Azure Monitor's semantics, so its documentation holds here:

- a count outside [min, max] is moved into the range first, whatever the metrics say;
- scale out when ANY scale-out rule fires (the largest count wins); scale in only when ALL
  scale-in rules fire (the smallest count wins); out has priority over in;
- a rule whose metric has no value cannot fire; when no rule has a value the set is kept at
  least at the default count, and never scaled in on missing data;
- after a scale action, a rule waits its cooldown before acting again.

Plus a flap guard (what Azure calls flapping): before scaling in, every scale-out rule's value is
projected onto the smaller count, and a scale-in that would make a scale-out rule fire is
reduced to a step that does not, or held. Without it, "out above 60, in below 55" at three
instances with 45 % cpu removes one, sees 67.5 %, adds it back, and so on all day.

No clock, no store, no metrics query: the caller passes ``value_of`` and ``now``, so the same
function runs the live loop and the backtest (``flexvm.scaling.backtest``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from flexvm.model.autoscale import (
    AutoscaleProfile,
    AutoscaleRule,
    Decision,
    Direction,
    format_duration,
    format_number,
    rescale,
)

# A rule with the value its statistic had over its window (None: no data).
Reading = tuple[AutoscaleRule, float | None]


def evaluate(
    profile: AutoscaleProfile,
    rules: list[AutoscaleRule],
    current: int,
    value_of: Callable[[AutoscaleRule], float | None],
    now: float,
    last_action_at: float | None,
    last_action_rule_cooldown: float | None = None,
    *,
    flap_guard: bool = True,
) -> Decision:
    """Decide what the set should do now.

    ``last_action_at`` is when the set last scaled (None: never); ``last_action_rule_cooldown``
    is the cooldown of the rule behind that action when known: the wait before acting again is
    the longer of it and the acting rule's own, so a rule with a short cooldown cannot cut short
    the settling time another rule asked for. ``flap_guard=False`` turns the guard off (for the
    backtest to show what it saves).
    """
    moved = _into_range(profile, current)
    if moved is not None:
        return moved
    readings: list[Reading] = [(rule, value_of(rule)) for rule in rules]
    evidence = {rule.key: value for rule, value in readings}
    if all(value is None for _, value in readings):
        return _without_metrics(profile, rules, current, evidence)
    wait = _Wait(now, last_action_at, last_action_rule_cooldown)
    decision = _scale_out(profile, readings, current, wait)
    if decision is None:
        decision = _scale_in(profile, readings, current, wait, flap_guard)
    decision.evidence = evidence
    return decision


def fires(rule: AutoscaleRule, value: float | None) -> bool:
    return value is not None and rule.operator.holds(value, rule.threshold)


def _into_range(profile: AutoscaleProfile, current: int) -> Decision | None:
    if current < profile.min_count:
        reason = f"{current} is below min ({profile.min_count}): scaling out to {profile.min_count}"
        return Decision("increase", current, profile.min_count, reason)
    if current > profile.max_count:
        reason = f"{current} is above max ({profile.max_count}): scaling in to {profile.max_count}"
        return Decision("decrease", current, profile.max_count, reason)
    return None


def _without_metrics(
    profile: AutoscaleProfile, rules: list[AutoscaleRule], current: int, evidence: dict[str, float | None]
) -> Decision:
    # The set may be new, or the collector down: keep enough instances to serve (the default),
    # and never remove any on no evidence at all.
    metrics = ", ".join(dict.fromkeys(rule.metric for rule in rules)) or "any rule (there are none)"
    if current < profile.default_count:
        reason = (
            f"no metrics for {metrics}; holding at least the default count: "
            f"scaling out {current} -> {profile.default_count}"
        )
        return Decision("increase", current, profile.default_count, reason, evidence=evidence)
    reason = f"no metrics for {metrics}; keeping {current} (never scaling in without data)"
    return Decision("none", current, current, reason, evidence=evidence)


class _Wait:
    """The cooldown clock: how long until a rule may act after the last scale action."""

    def __init__(self, now: float, last_action_at: float | None, last_cooldown: float | None) -> None:
        self.now = now
        self.last_action_at = last_action_at
        self.last_cooldown = last_cooldown or 0.0

    def left(self, rule: AutoscaleRule) -> float:
        if self.last_action_at is None:
            return 0.0
        wait = max(rule.cooldown_seconds, self.last_cooldown)
        return max(0.0, self.last_action_at + wait - self.now)

    def held(self, rule: AutoscaleRule, current: int, target: int, why: str) -> Decision | None:
        left = self.left(rule)
        if left <= 0:
            return None
        # Rounded up: "0s left" would read as if the wait were over.
        shown = format_duration(math.ceil(left))
        reason = f"cooldown: {shown} left after the last scale action ({why}; wants {current} -> {target})"
        return Decision("held", current, current, reason, rule.key)


def _why(rule: AutoscaleRule, value: float | None) -> str:
    shown = "no data" if value is None else f"{value:.1f}"
    return (
        f"{rule.statistic} {rule.metric} over {format_duration(rule.window_seconds)} is {shown} "
        f"({rule.operator.symbol} {format_number(rule.threshold)})"
    )


def _scale_out(profile: AutoscaleProfile, readings: list[Reading], current: int, wait: _Wait) -> Decision | None:
    fired = [(r, v) for r, v in readings if r.direction is Direction.INCREASE and fires(r, v)]
    if not fired:
        return None
    rule, value = max(fired, key=lambda reading: reading[0].count)  # the first of equals
    why = _why(rule, value)
    if current >= profile.max_count:
        return Decision("held", current, current, f"already at max ({profile.max_count}): {why}", rule.key)
    target = min(current + rule.count, profile.max_count)
    held = wait.held(rule, current, target, why)
    if held is not None:
        return held
    capped = f" (by {rule.count}, capped at max {profile.max_count})" if target < current + rule.count else ""
    return Decision("increase", current, target, f"scale out {current} -> {target}{capped}: {why}", rule.key)


def _scale_in(
    profile: AutoscaleProfile, readings: list[Reading], current: int, wait: _Wait, flap_guard: bool
) -> Decision:
    scale_in = [(r, v) for r, v in readings if r.direction is Direction.DECREASE]
    fired = [(r, v) for r, v in scale_in if fires(r, v)]
    if not scale_in or len(fired) < len(scale_in):
        return Decision("none", current, current, _nothing_fired(readings, len(fired), len(scale_in)))
    rule, value = min(fired, key=lambda reading: reading[0].count)
    why = _why(rule, value)
    if current <= profile.min_count:
        return Decision("held", current, current, f"already at min ({profile.min_count}): {why}", rule.key)
    target = max(current - rule.count, profile.min_count)
    held = wait.held(rule, current, target, why)
    if held is not None:
        return held
    if flap_guard:
        return _guarded_scale_in(readings, current, target, rule, why)
    return Decision("decrease", current, target, f"scale in {current} -> {target}: {why}", rule.key)


def _guarded_scale_in(readings: list[Reading], current: int, target: int, rule: AutoscaleRule, why: str) -> Decision:
    """Scale in as far toward ``target`` as the scale-out rules allow, one instance at a time."""
    trip = _would_trip(readings, current, target)
    if trip is None:
        return Decision("decrease", current, target, f"scale in {current} -> {target}: {why}", rule.key)
    out_rule, projected = trip
    blocked = (
        f"projected {out_rule.statistic} {out_rule.metric} {projected:.1f} would trip the scale-out rule "
        f"({out_rule.operator.symbol} {format_number(out_rule.threshold)})"
    )
    # A smaller step may still be safe (remove 1 of 10 rather than 3): take the largest such.
    for smaller in range(target + 1, current):
        if _would_trip(readings, current, smaller) is None:
            reason = f"scale in {current} -> {smaller} (not to {target}: {blocked}): {why}"
            return Decision("decrease", current, smaller, reason, rule.key)
    return Decision("held", current, current, f"scale-in to {target} held: {blocked}", rule.key)


def _would_trip(readings: list[Reading], current: int, target: int) -> tuple[AutoscaleRule, float] | None:
    """The first scale-out rule that would fire at ``target`` instances, with its projected value."""
    for rule, value in readings:
        if rule.direction is not Direction.INCREASE or value is None:
            continue
        projected = rescale(rule.metric, value, current, target)
        if fires(rule, projected):
            return rule, projected
    return None


def _nothing_fired(readings: list[Reading], fired_in: int, rules_in: int) -> str:
    if rules_in == 0:
        reason = "no scale-out rule fired, and there are no scale-in rules"
    else:
        reason = f"no scale-out rule fired, and {fired_in} of {rules_in} scale-in rules did (all must)"
    missing = [rule.key for rule, value in readings if value is None]
    if missing:
        reason += f"; no data for: {', '.join(missing)}"
    return reason
