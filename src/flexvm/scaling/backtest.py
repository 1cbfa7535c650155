"""Backtest: replay a scale set's recorded metrics against autoscale rules, before trusting them.

The load is taken as conserved: at each moment the set's total work is the recorded
per-instance value times the instances it really had; under the simulated count each instance
gets total / simulated (a percent stops at 100: the rest queues); set-wide figures such as the
load balancer's ``requests_per_s`` pass through unchanged. Each step asks
``flexvm.scaling.rules.evaluate`` exactly what the live loop would, with each rule's statistic
taken over its window from the simulated series.

Instances appear the moment they are asked for unless ``provision_delay`` says otherwise; with a
delay, the count the rules see goes up at once (as a scale set's capacity does) while the
instances sharing the load follow ``provision_delay`` seconds later. Removals take effect at once.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import time
from dataclasses import dataclass

from flexvm.errors import InvalidInput
from flexvm.model.autoscale import (
    AutoscaleProfile,
    AutoscaleRule,
    Decision,
    covers_window,
    format_number,
    rescale,
)
from flexvm.model.times import parse_duration, parse_moment
from flexvm.scaling.rules import evaluate

Points = list[tuple[float, float]]  # (timestamp, value), oldest first


@dataclass(frozen=True)
class Flap:
    """Two scale actions in opposite directions close together: the rules fought each other."""

    first_at: float
    first_from: int
    first_to: int
    second_at: float
    second_from: int
    second_to: int

    @property
    def kind(self) -> str:
        return "out-in" if self.first_to > self.first_from else "in-out"


@dataclass(frozen=True)
class Span:
    """When a backtest runs: from ``start`` to ``end``, the rules evaluated every ``step`` seconds."""

    start: float
    end: float
    step: float


SYNTHETIC_DAY = 86400.0
DEFAULT_LOOKBACK = 3600.0
DEFAULT_STEP = "15s"


def simulation_span(
    start: str | float | None,
    end: str | float | None,
    step: str | float,
    *,
    synthetic: bool,
    now: float,
) -> Span:
    """The span of a backtest asked for in people's terms ('-1d', 'now', an ISO time; a step of
    '15s'). By default the last hour, up to now. A synthetic day starts at a midnight (UTC; by
    default the last one) and lasts a day, whatever ``end`` says."""
    seconds = parse_duration(step, "step")
    if synthetic:
        midnight = math.floor(now / SYNTHETIC_DAY) * SYNTHETIC_DAY
        first = parse_moment(start, "from", now=now, default=midnight)
        return Span(first, first + SYNTHETIC_DAY, seconds)
    first = parse_moment(start, "from", now=now, default=now - DEFAULT_LOOKBACK)
    last = parse_moment(end, "to", now=now, default=now)
    if last <= first:
        raise InvalidInput("to", "must be after 'from'")
    return Span(first, last, seconds)


@dataclass
class Backtest:
    span: Span
    timeline: list[tuple[float, int, Decision]]  # (time, count after, decision): acted or held, plus start and end
    counts: list[tuple[float, int]]  # (time, count after that step's decision), every step
    flaps: list[Flap]
    flap_window: float
    instance_minutes: float  # area under ``counts``
    recorded_instance_minutes: float  # the same for the instances the set really had
    max_count: int
    min_count: int
    actions: int  # decisions that changed the count


class _StepFunction:
    """A count over time that holds its last value: (time, value) change points."""

    def __init__(self, points: Points, before: float | None = None) -> None:
        self.times = [t for t, _ in points]
        self.values = [v for _, v in points]
        self.before = self.values[0] if before is None else before

    def at(self, t: float) -> float:
        index = bisect.bisect_right(self.times, t) - 1
        return self.values[index] if index >= 0 else self.before

    def lowest(self, start: float, end: float) -> float:
        """The smallest value held at any time in [start, end]."""
        low = self.at(start)
        for index in range(bisect.bisect_right(self.times, start), bisect.bisect_right(self.times, end)):
            low = min(low, self.values[index])
        return low

    def append(self, t: float, value: float) -> None:
        self.times.append(t)
        self.values.append(value)


class _Replay:
    """The recorded series re-expressed under the simulated count, summarised as rules ask."""

    def __init__(self, recorded: dict[str, Points], instances: _StepFunction, capacity: _StepFunction, delay: float):
        self.recorded = {metric: sorted(points) for metric, points in recorded.items()}
        self.times = {metric: [t for t, _ in points] for metric, points in self.recorded.items()}
        self.instances = instances
        self.capacity = capacity
        self.delay = delay

    def serving(self, t: float) -> float:
        # An instance serves once it has existed for ``delay`` seconds; removals bite at once.
        return self.capacity.lowest(t - self.delay, t) if self.delay > 0 else self.capacity.at(t)

    def value(self, rule: AutoscaleRule, now: float) -> float | None:
        """The rule's statistic over [now - window, now): per grain bucket, then over the buckets."""
        points = self.recorded.get(rule.metric)
        if not points:
            return None
        times = self.times[rule.metric]
        low = bisect.bisect_left(times, now - rule.window_seconds)
        high = bisect.bisect_left(times, now)
        if low >= high or not covers_window(times[low], now, rule):
            return None
        buckets: dict[float, list[float]] = {}
        for t, value in points[low:high]:
            simulated = rescale(rule.metric, value, self.instances.at(t), self.serving(t))
            # Aligned to the epoch like the metrics store's buckets, so live and backtest agree.
            buckets.setdefault(math.floor(t / rule.grain_seconds) * rule.grain_seconds, []).append(simulated)
        if not buckets:
            return None
        return _statistic(rule.statistic, [_statistic(rule.statistic, values) for values in buckets.values()])


def _statistic(statistic: str, values: list[float]) -> float:
    if statistic == "min":
        return min(values)
    if statistic == "max":
        return max(values)
    return sum(values) / len(values)


def simulate(
    profile: AutoscaleProfile,
    rules: list[AutoscaleRule],
    recorded: dict[str, Points],
    recorded_instances: Points,
    start: float,
    end: float,
    step: float,
    initial: int | None = None,
    *,
    provision_delay: float = 0.0,
    flap_guard: bool = True,
    flap_window: float | None = None,
) -> Backtest:
    """Evaluate ``rules`` every ``step`` seconds from ``start`` to ``end`` over recorded metrics.

    ``recorded[metric]`` is the set's series of that metric (per-instance averages, or set-wide
    totals for ``requests_per_s``); ``recorded_instances`` the count the set really had, as
    change points. The simulation starts at ``initial`` instances (default: the profile's
    default). A decision applies at once: new instances share the load from the next sample
    on, unless ``provision_delay`` holds them back (see the module docstring). ``flap_window``
    defaults to twice the longest cooldown + window among the rules.
    """
    _check_inputs(profile, rules, recorded_instances, start, end, step, provision_delay)
    instances = _StepFunction(sorted(recorded_instances))
    capacity = _StepFunction([], before=profile.default_count if initial is None else initial)
    replay = _Replay(recorded, instances, capacity, provision_delay)
    cooldowns = {rule.key: rule.cooldown_seconds for rule in rules}
    timeline: list[tuple[float, int, Decision]] = []
    counts: list[tuple[float, int]] = []
    last_action_at: float | None = None
    last_cooldown: float | None = None
    steps = int(math.floor((end - start) / step + 1e-9))
    for index in range(steps + 1):
        now = start + index * step
        current = int(capacity.at(now))
        decision = evaluate(
            profile,
            rules,
            current,
            functools.partial(replay.value, now=now),
            now,
            last_action_at,
            last_cooldown,
            flap_guard=flap_guard,
        )
        if decision.target != current:
            capacity.append(now, decision.target)
            last_action_at = now
            last_cooldown = cooldowns.get(decision.rule_id or "")
        counts.append((now, decision.target))
        if decision.action != "none" or index in (0, steps):
            timeline.append((now, decision.target, decision))
    window = flap_window if flap_window is not None else _default_flap_window(rules)
    return _summarise(Span(start, end, step), timeline, counts, window, instances)


def _check_inputs(
    profile: AutoscaleProfile,
    rules: list[AutoscaleRule],
    recorded_instances: Points,
    start: float,
    end: float,
    step: float,
    provision_delay: float,
) -> None:
    profile.check()
    for rule in rules:
        rule.check()
    if not recorded_instances:
        raise InvalidInput("recorded_instances", "needs at least one (time, count) point")
    if not step > 0:
        raise InvalidInput("step", "must be longer than zero")
    if end < start:
        raise InvalidInput("end", "cannot be before start")
    if provision_delay < 0:
        raise InvalidInput("provision_delay", "cannot be negative")


def _default_flap_window(rules: list[AutoscaleRule]) -> float:
    return 2 * max((rule.cooldown_seconds + rule.window_seconds for rule in rules), default=0.0)


def _summarise(
    span: Span,
    timeline: list[tuple[float, int, Decision]],
    counts: list[tuple[float, int]],
    window: float,
    instances: _StepFunction,
) -> Backtest:
    changes = [(t, d.current, d.target) for t, _, d in timeline if d.target != d.current]
    flaps = [
        Flap(t1, from1, to1, t2, from2, to2)
        for (t1, from1, to1), (t2, from2, to2) in zip(changes, changes[1:], strict=False)
        if (to1 > from1) != (to2 > from2) and t2 - t1 <= window
    ]
    area = recorded_area = 0.0
    for (t, count), (t_next, _) in zip(counts, counts[1:], strict=False):
        area += count * (t_next - t)
        recorded_area += instances.at(t) * (t_next - t)
    return Backtest(
        span=span,
        timeline=timeline,
        counts=counts,
        flaps=flaps,
        flap_window=window,
        instance_minutes=area / 60,
        recorded_instance_minutes=recorded_area / 60,
        max_count=max(count for _, count in counts),
        min_count=min(count for _, count in counts),
        actions=len(changes),
    )


# The synthetic day's shape: (hour, fraction of the way from base to peak), smoothly joined.
_DAY_SHAPE = [(0.0, 0.0), (6.0, 0.0), (9.0, 0.75), (12.0, 1.0), (14.0, 1.0), (17.0, 0.7), (22.0, 0.0), (24.0, 0.0)]
# Short bursts on top (start hour, minutes, fraction of peak - base): one in the quiet night,
# one in the afternoon, to show how a rule's window smooths (or does not smooth) them.
_SPIKES = [(3.0, 2.0, 0.55), (15.5, 3.0, 0.2)]
_SYNTHETIC_INSTANCES = 2.0
_REQUESTS_PER_CPU_PERCENT = 2.0  # requests/s that cost one instance one percent of cpu


def synthetic_day(
    start: float, step: float = 60.0, base: float = 20.0, peak: float = 85.0, noise_seed: int = 1
) -> tuple[dict[str, Points], Points]:
    """A day of recorded metrics for a 2-instance set: quiet night, morning ramp, midday peak.

    ``start`` is the day's midnight. Returns (recorded, recorded_instances) for ``simulate``:
    ``cpu_percent`` per instance, with seeded noise and two short spikes, and the matching
    ``requests_per_s`` (set-wide) and ``requests_per_instance_per_s``.
    """
    rng = random.Random(noise_seed)
    cpu: Points = []
    requests: Points = []
    per_instance: Points = []
    for index in range(int(86400 // step)):
        t = start + index * step
        hour = index * step / 3600
        level = base + (peak - base) * (_day_shape(hour) + _spike(hour)) + rng.gauss(0.0, 2.5)
        level = min(100.0, max(0.0, level))
        cpu.append((t, level))
        total_requests = level * _SYNTHETIC_INSTANCES * _REQUESTS_PER_CPU_PERCENT
        requests.append((t, total_requests))
        per_instance.append((t, total_requests / _SYNTHETIC_INSTANCES))
    recorded = {"cpu_percent": cpu, "requests_per_s": requests, "requests_per_instance_per_s": per_instance}
    return recorded, [(start, _SYNTHETIC_INSTANCES)]


def _day_shape(hour: float) -> float:
    for (h0, f0), (h1, f1) in zip(_DAY_SHAPE, _DAY_SHAPE[1:], strict=False):
        if h0 <= hour < h1:
            # Cosine easing: load changes gradually at the ends of a ramp, not in corners.
            ease = (1 - math.cos(math.pi * (hour - h0) / (h1 - h0))) / 2
            return f0 + (f1 - f0) * ease
    return _DAY_SHAPE[-1][1]


def _spike(hour: float) -> float:
    return sum(height for at, minutes, height in _SPIKES if at <= hour < at + minutes / 60)


_BLOCKS = "▁▂▃▄▅▆▇█"


def render_timeline(backtest: Backtest, *, width: int = 72) -> str:
    """A text timeline: one line per action or held decision (UTC clock), a strip of the count
    over the run, and a summary line. Repeated held decisions are folded into one line."""
    lines: list[str] = []
    previous_key: tuple[str, str | None, int, str] | None = None
    for t, count, decision in backtest.timeline:
        key = (decision.action, decision.rule_id, count, decision.reason.split(":")[0])
        if decision.action == "held" and key == previous_key:
            lines[-1] = _fold(lines[-1], t)
            continue
        previous_key = key
        lines.append(f"{_clock(t)}  {decision.current:>3} -> {count:<3}  {decision.action:<8}  {decision.reason}")
    lines.append(_strip(backtest, width))
    lines.append(
        f"flaps: {len(backtest.flaps)}   actions: {backtest.actions}   "
        f"instance-minutes: {format_number(round(backtest.instance_minutes))} "
        f"(recorded: {format_number(round(backtest.recorded_instance_minutes))})"
    )
    return "\n".join(lines)


def _fold(line: str, t: float) -> str:
    """'... (held again through HH:MM:SS)' instead of one line per step."""
    marker = "  [held again through "
    if marker in line:
        line = line[: line.index(marker)]
    return f"{line}{marker}{_clock(t)}]"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def _strip(backtest: Backtest, width: int) -> str:
    counts = [count for _, count in backtest.counts]
    columns = max(1, min(width, len(counts)))
    low, high = backtest.min_count, backtest.max_count
    chars = []
    for column in range(columns):
        chunk = counts[column * len(counts) // columns : (column + 1) * len(counts) // columns]
        peak = max(chunk)  # the highest count in the slice: a brief scale-out stays visible
        level = 0 if high == low else round((peak - low) / (high - low) * (len(_BLOCKS) - 1))
        chars.append(_BLOCKS[level])
    first, last = backtest.counts[0][0], backtest.counts[-1][0]
    return f"count {_clock(first)[:5]} {''.join(chars)} {_clock(last)[:5]}  ({low}..{high} instances)"
