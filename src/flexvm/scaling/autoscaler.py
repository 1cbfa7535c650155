"""Autoscale: a set's profile and rules, evaluated on its recorded series, acted on, and recorded.

Every evaluation that acts, and every one a rule wanted but something held back (range, cooldown,
the flap guard), becomes an event with its reason: `flexvm autoscale history` reads them. The
backtest replays the same series against the same engine.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flexvm.access.quotas import admit_instances
from flexvm.errors import InvalidInput, QuotaExceeded
from flexvm.model.autoscale import (
    AutoscaleProfile,
    AutoscaleRule,
    Decision,
    contradictions,
    covers_window,
    format_duration,
)
from flexvm.model.scaleset import AutoscaleEvent, ScaleSet
from flexvm.monitor.query import MAX_POINTS, MetricsQuery
from flexvm.scaling.backtest import DEFAULT_STEP, Backtest, Span, simulate, simulation_span, synthetic_day
from flexvm.scaling.rules import evaluate
from flexvm.scaling.scalesets import ScaleSetService, operation_live
from flexvm.store.db import Database
from flexvm.store.metrics import MetricsRepo
from flexvm.store.scaling import ScaleSetRepo

log = logging.getLogger(__name__)

HELD_REPEAT_SECONDS = 600.0  # a hold by the same rule is recorded again only after this long
MAX_RULES = 20
MAX_SIMULATED_STEPS = 200_000  # about 35 days at 15 s


@dataclass
class AddedRule:
    rule: AutoscaleRule
    warnings: list[str]


def profile_of(scale_set: ScaleSet) -> AutoscaleProfile | None:
    raw = scale_set.autoscale
    if not raw or not raw.get("enabled", True):
        return None
    return AutoscaleProfile(raw["min"], raw["max"], raw["default"])


def rules_of(scale_set: ScaleSet) -> list[AutoscaleRule]:
    return [AutoscaleRule(**raw) for raw in scale_set.rules]


def rule_to_dict(rule: AutoscaleRule) -> dict[str, Any]:
    values = dataclasses.asdict(rule)
    values["operator"] = rule.operator.value
    values["direction"] = rule.direction.value
    return values


class AutoscaleService:
    def __init__(
        self,
        db: Database,
        scale_sets: ScaleSetService,
        query: MetricsQuery,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.scale_sets = scale_sets
        self.query = query
        self.clock = clock

    # --- settings ----------------------------------------------------------------------------
    def set_profile(self, name: str, min_count: int, max_count: int, default_count: int) -> AutoscaleProfile:
        profile = AutoscaleProfile(min_count, max_count, default_count)
        profile.check()
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            scale_set.autoscale = {"min": min_count, "max": max_count, "default": default_count, "enabled": True}
            sets.save(scale_set)
        return profile

    def disable(self, name: str) -> None:
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            if scale_set.autoscale:
                scale_set.autoscale = {**scale_set.autoscale, "enabled": False}
            sets.save(scale_set)

    def add_rule(self, name: str, rule: AutoscaleRule) -> AddedRule:
        rule.check()
        if rule.window_seconds / rule.grain_seconds > MAX_POINTS:
            raise InvalidInput("grain_seconds", f"too fine for the window: at most {MAX_POINTS} grains per window")
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            rules = rules_of(scale_set)
            if len(rules) >= MAX_RULES:
                raise InvalidInput("rule", f"a scale set has at most {MAX_RULES} rules")
            used = {r.id for r in rules}
            rule.id = next(f"r{n}" for n in range(1, MAX_RULES + 2) if f"r{n}" not in used)
            scale_set.rules = [*scale_set.rules, rule_to_dict(rule)]
            sets.save(scale_set)
        warnings = contradictions([*rules, rule], typical_count=max(2, scale_set.capacity))
        if rule.cooldown_seconds < rule.window_seconds:
            warnings.append(
                f"{rule.id}: its cooldown ({format_duration(rule.cooldown_seconds)}) is shorter than its window "
                f"({format_duration(rule.window_seconds)}), so it may act again on measurements taken before its "
                "last action; a cooldown at least as long as the window avoids that"
            )
        return AddedRule(rule, warnings)

    def remove_rule(self, name: str, rule_id: str) -> None:
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            scale_set = sets.lock(name)
            kept = [r for r in scale_set.rules if r.get("id") != rule_id]
            if len(kept) == len(scale_set.rules):
                known = ", ".join(r.get("id", "?") for r in scale_set.rules) or "none"
                raise InvalidInput("rule_id", f"scale set '{name}' has no rule '{rule_id}'; its rules: {known}")
            scale_set.rules = kept
            sets.save(scale_set)

    def rules(self, name: str) -> builtins.list[AutoscaleRule]:
        return rules_of(self.scale_sets.get(name))

    def history(self, name: str, limit: int = 50) -> builtins.list[AutoscaleEvent]:
        with self.db.session() as session:
            ScaleSetRepo(session).get(name)
            return ScaleSetRepo(session).events(name, limit)

    # --- evaluating --------------------------------------------------------------------------
    def evaluate(self, name: str) -> Decision | None:
        """One evaluation; acts on the set when a rule says so. None: autoscale is off for it."""
        scale_set = self.scale_sets.get(name)
        profile = profile_of(scale_set)
        if profile is None or scale_set.deleting:
            return None
        now = self.clock()
        busy = scale_set.active_operation_id
        if busy is not None and self._live(busy):
            # Decide on the set as it will be, not while instances are still coming or going.
            waiting = Decision(
                "held",
                scale_set.capacity,
                scale_set.capacity,
                f"the set is still changing to {scale_set.capacity} instances (operation {busy[:8]}); autoscale waits",
            )
            self._record_held(name, waiting, now)
            return waiting
        rules = rules_of(scale_set)
        cooldowns = {r.id: r.cooldown_seconds for r in rules}
        decision = evaluate(
            profile,
            rules,
            scale_set.capacity,
            lambda rule: self.value(name, rule),
            now,
            scale_set.last_scale_at,
            cooldowns.get(scale_set.last_scale_rule or ""),
        )
        if decision.action in ("increase", "decrease"):
            self._act(name, decision, now)
        elif decision.action == "held":
            self._record_held(name, decision, now)
        return decision

    def _live(self, operation_id: str) -> bool:
        with self.db.session() as session:
            return operation_live(session, operation_id)

    def value(self, name: str, rule: AutoscaleRule) -> float | None:
        """The rule's statistic over its window; None (no data) when too little of it is measured."""
        series = self.query.series(
            "scaleset",
            name,
            rule.metric,
            window=f"{rule.window_seconds:g}s",
            statistic=rule.statistic,
            grain=f"{rule.grain_seconds:g}s",
        )
        if not series.points or not covers_window(series.points[0][0], self.clock(), rule):
            return None
        return series.summary()

    def _act(self, name: str, decision: Decision, now: float) -> None:
        size = self.scale_sets.sizes.get(self.scale_sets.get(name).size)
        try:
            with self.db.session() as session:
                sets = ScaleSetRepo(session)
                scale_set = sets.lock(name)
                changed = scale_set.capacity != decision.current or operation_live(
                    session, scale_set.active_operation_id
                )
                if changed or scale_set.deleting:
                    return  # someone scaled (or deleted) the set while we measured: theirs stands
                # The project's quota holds for autoscale as for a person scaling by hand.
                admit_instances(session, name, size, decision.target - scale_set.capacity)
                self._scaled(sets, scale_set, name, decision, now)
        except QuotaExceeded as err:
            reason = f"{decision.reason}; held: {err.message}"
            held = dataclasses.replace(decision, action="held", target=decision.current, reason=reason)
            self._record_held(name, held, now)
            return
        log.info("autoscale %s: %d -> %d: %s", name, decision.current, decision.target, decision.reason)
        self.scale_sets.heal(name, now=True)  # starts the converge now, unless one is already running

    def _scaled(self, sets: ScaleSetRepo, scale_set: ScaleSet, name: str, decision: Decision, now: float) -> None:
        scale_set.capacity = decision.target
        scale_set.last_scale_at = now
        scale_set.last_scale_rule = decision.rule_id
        sets.save(scale_set)
        sets.add_event(self._event(name, decision, now, decision.action))
        sets.forget_old_events(name)

    def _record_held(self, name: str, decision: Decision, now: float) -> None:
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            last = sets.events(name, 1)
            repeated = last and last[0].action == "held" and last[0].rule_id == decision.rule_id
            if repeated and now - last[0].at < HELD_REPEAT_SECONDS:
                return  # "cooldown: 40 s left" every pass would bury the history
            sets.add_event(self._event(name, decision, now, "held"))
            sets.forget_old_events(name)

    @staticmethod
    def _event(name: str, decision: Decision, now: float, action: str) -> AutoscaleEvent:
        return AutoscaleEvent(
            None,
            name,
            now,
            action,
            decision.current,
            decision.target,
            decision.reason,
            decision.rule_id,
            dict(decision.evidence),
        )

    # --- backtest ----------------------------------------------------------------------------
    def simulate(
        self,
        name: str,
        start: str | float | None = None,
        end: str | float | None = None,
        *,
        rules: builtins.list[AutoscaleRule] | None = None,
        profile: AutoscaleProfile | None = None,
        step: str | float = DEFAULT_STEP,
        synthetic: bool = False,
        flap_guard: bool = True,
    ) -> Backtest:
        """Replay the set's recorded series from ``start`` to ``end`` (times as people write
        them: '-1h', 'now', ISO 8601, unix seconds; by default the last hour) against its rules
        and profile, or the ones given. ``synthetic``: a generated day of load instead of the
        recording, from a midnight."""
        span = simulation_span(start, end, step, synthetic=synthetic, now=self.clock())
        scale_set = self.scale_sets.get(name)
        rules = rules if rules is not None else rules_of(scale_set)
        profile = profile or profile_of(scale_set)
        if profile is None:
            raise InvalidInput("profile", f"scale set '{name}' has no autoscale profile; give one or set it first")
        if not rules:
            raise InvalidInput("rules", f"scale set '{name}' has no autoscale rules; give a rules file or add some")
        for rule in rules:
            rule.check()
        if not synthetic and (span.end - span.start) / span.step > MAX_SIMULATED_STEPS:
            raise InvalidInput("step", f"too fine for that span: at most {MAX_SIMULATED_STEPS:,} steps")
        if synthetic:
            # Fine enough that every rule's window holds several points.
            fine = max(1.0, min([60.0, *(r.grain_seconds for r in rules)]))
            recorded, instances = synthetic_day(span.start, step=fine)
        else:
            recorded, instances = self._recorded(name, {r.metric for r in rules}, span)
        return simulate(profile, rules, recorded, instances, span.start, span.end, span.step, flap_guard=flap_guard)

    def _recorded(
        self, name: str, metrics: set[str], span: Span
    ) -> tuple[dict[str, builtins.list[tuple[float, float]]], builtins.list[tuple[float, float]]]:
        start, end = span.start, span.end
        grain = max(span.step, 1.0)
        with self.db.session() as session:
            ScaleSetRepo(session).get(name)
            repo = MetricsRepo(session)

            def points(metric: str) -> builtins.list[tuple[float, float]]:
                buckets = repo.raw_buckets("scaleset", name, metric, start, end, grain)
                if not buckets:
                    buckets = repo.rollup_buckets("scaleset", name, metric, start, end, max(60.0, grain - grain % 60))
                return [(b.start, b.avg) for b in buckets]

            recorded = {metric: points(metric) for metric in metrics}
            instances = points("instances")
        if not instances or not any(recorded.values()):
            raise InvalidInput("from", f"no recorded metrics for scale set '{name}' between those times")
        return recorded, instances
