"""Autoscale: a scale set's instance range, the rules that move it, and what one evaluation decided.

Azure Monitor autoscale semantics, so its documentation reads true here: a profile bounds the
count (min, max, default); each rule compares one statistic of one metric over a window (made
of grain-sized buckets) against a threshold and adds or removes ``count`` instances, then waits
``cooldown_seconds``. The engine that applies them is ``flexvm.scaling.rules``; this module holds
the vocabulary and refuses rules that cannot mean anything (a cpu threshold of 140, a grain
longer than its window) before they are stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from flexvm.errors import InvalidInput
from flexvm.model.metrics import STATISTICS
from flexvm.model.scaleset import MAX_INSTANCES
from flexvm.model.times import parse_cooldown, parse_duration

MIN_GRAIN_SECONDS = 1.0
MAX_WINDOW_SECONDS = 86400.0

# Metrics of a scale set as a whole, in the names rules use.
SCALESET_METRICS: dict[str, str] = {
    "cpu_percent": "percent of vCPUs in use, averaged over the set's instances (0-100)",
    "cpu_wait_percent": "percent of time vCPUs waited for a host CPU, averaged over the instances (0-100)",
    "memory_used_percent": "memory in use as a percent of what each guest has, averaged (0-100)",
    "net_rx_bytes_per_s": "network bytes received per second, averaged per instance",
    "net_tx_bytes_per_s": "network bytes sent per second, averaged per instance",
    "disk_read_bytes_per_s": "bytes read from disk per second, averaged per instance",
    "disk_write_bytes_per_s": "bytes written to disk per second, averaged per instance",
    "requests_per_s": "requests per second the set's load balancer passed on, for the whole set",
    "requests_per_instance_per_s": "the load balancer's requests per second divided by the instances",
}
# Averages per instance: the same work spread over more instances gives a smaller figure.
PER_INSTANCE = frozenset(SCALESET_METRICS) - {"requests_per_s"}
PERCENT = frozenset({"cpu_percent", "cpu_wait_percent", "memory_used_percent"})


class Operator(StrEnum):
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    EQ = "eq"
    NE = "ne"

    @classmethod
    def parse(cls, text: str | Operator) -> Operator:
        """'gt', '>', or Azure's 'GreaterThan' (any case) -> Operator.GT."""
        if isinstance(text, Operator):
            return text
        found = _OPERATOR_ALIASES.get(str(text).strip().lower())
        if found is None:
            valid = ", ".join(op.value for op in cls)
            raise InvalidInput(
                "operator", f"unknown operator '{text}'; valid: {valid} (or Azure's GreaterThan, LessThan, ...)"
            )
        return found

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]

    def holds(self, value: float, threshold: float) -> bool:
        """Whether ``value <op> threshold``: the rule's condition is met."""
        if self is Operator.GT:
            return value > threshold
        if self is Operator.GE:
            return value >= threshold
        if self is Operator.LT:
            return value < threshold
        if self is Operator.LE:
            return value <= threshold
        if self is Operator.EQ:
            return value == threshold
        return value != threshold


_SYMBOLS = {
    Operator.GT: ">",
    Operator.GE: ">=",
    Operator.LT: "<",
    Operator.LE: "<=",
    Operator.EQ: "==",
    Operator.NE: "!=",
}
_AZURE_NAMES = {
    Operator.GT: "greaterthan",
    Operator.GE: "greaterthanorequal",
    Operator.LT: "lessthan",
    Operator.LE: "lessthanorequal",
    Operator.EQ: "equals",
    Operator.NE: "notequals",
}
_OPERATOR_ALIASES = {
    **{op.value: op for op in Operator},
    **{symbol: op for op, symbol in _SYMBOLS.items()},
    **{name: op for op, name in _AZURE_NAMES.items()},
}


class Direction(StrEnum):
    INCREASE = "increase"  # scale out: add instances
    DECREASE = "decrease"  # scale in: remove instances

    @classmethod
    def parse(cls, text: str | Direction) -> Direction:
        """'increase'/'out' or 'decrease'/'in' (Azure's Increase/Decrease in any case)."""
        if isinstance(text, Direction):
            return text
        found = {"increase": cls.INCREASE, "out": cls.INCREASE, "decrease": cls.DECREASE, "in": cls.DECREASE}.get(
            str(text).strip().lower()
        )
        if found is None:
            raise InvalidInput("direction", f"unknown direction '{text}'; valid: increase (out), decrease (in)")
        return found


@dataclass
class AutoscaleProfile:
    min_count: int
    max_count: int
    default_count: int  # what the set keeps at least while no metrics arrive

    def check(self) -> None:
        if self.min_count < 0:
            raise InvalidInput("min_count", f"min ({self.min_count}) cannot be negative")
        if self.max_count > MAX_INSTANCES:
            raise InvalidInput("max_count", f"max ({self.max_count}) is more than the limit of {MAX_INSTANCES}")
        if self.min_count > self.max_count:
            raise InvalidInput("min_count", f"min ({self.min_count}) is larger than max ({self.max_count})")
        if not self.min_count <= self.default_count <= self.max_count:
            raise InvalidInput(
                "default_count",
                f"default ({self.default_count}) is outside min..max ({self.min_count}..{self.max_count})",
            )


@dataclass
class AutoscaleRule:
    metric: str
    statistic: str  # applied within each grain bucket, then over the window's buckets
    grain_seconds: float
    window_seconds: float
    operator: Operator
    threshold: float
    direction: Direction
    count: int  # instances to add or remove
    cooldown_seconds: float  # wait after a scale action before this rule may act again
    id: str = ""

    def __post_init__(self) -> None:
        # Rules arrive from JSON and the database as strings; an operator or direction that
        # names nothing is refused at once, since the rule could not even be described.
        self.operator = Operator.parse(self.operator)
        self.direction = Direction.parse(self.direction)

    @classmethod
    def written(
        cls,
        *,
        metric: str,
        statistic: str,
        grain: str | float,
        window: str | float,
        operator: str,
        threshold: float,
        action: str,
        count: int,
        cooldown: str | float,
    ) -> AutoscaleRule:
        """A rule as people write it, with the CLI's and the API's names: durations such as '1m'
        and '5m', a cooldown that may be '0s', the direction called ``action``. Not yet checked:
        ``check`` is."""
        return cls(
            metric=metric,
            statistic=statistic,
            grain_seconds=parse_duration(grain, "grain"),
            window_seconds=parse_duration(window, "window"),
            operator=operator,  # type: ignore[arg-type]  # parsed (and refused) in __post_init__
            threshold=threshold,
            direction=action,  # type: ignore[arg-type]
            count=count,
            cooldown_seconds=parse_cooldown(cooldown),
        )

    @property
    def key(self) -> str:
        """How decisions name the rule: its id, or its description when it has none."""
        return self.id or self.describe()

    def check(self) -> None:
        if self.metric not in SCALESET_METRICS:
            known = ", ".join(SCALESET_METRICS)
            raise InvalidInput("metric", f"unknown scale-set metric '{self.metric}'; known: {known}")
        if self.statistic not in STATISTICS:
            raise InvalidInput("statistic", f"unknown statistic '{self.statistic}'; valid: {', '.join(STATISTICS)}")
        for name in ("grain_seconds", "window_seconds", "threshold", "cooldown_seconds"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidInput(name, "must be a finite number")
        self._check_timing()
        if self.count < 1:
            raise InvalidInput("count", f"must add or remove at least 1 instance, not {self.count}")
        if self.count > MAX_INSTANCES:
            raise InvalidInput("count", f"at most {MAX_INSTANCES} instances at once")
        self._check_threshold()

    def _check_timing(self) -> None:
        if self.grain_seconds < MIN_GRAIN_SECONDS:
            raise InvalidInput("grain_seconds", f"must be at least {MIN_GRAIN_SECONDS:g} s")
        if self.window_seconds > MAX_WINDOW_SECONDS:
            raise InvalidInput("window_seconds", f"at most 1 day, not {format_duration(self.window_seconds)}")
        if self.grain_seconds > self.window_seconds:
            raise InvalidInput(
                "grain_seconds",
                f"the grain ({format_duration(self.grain_seconds)}) cannot be longer than "
                f"the window ({format_duration(self.window_seconds)})",
            )
        if self.cooldown_seconds < 0:
            raise InvalidInput("cooldown_seconds", "cannot be negative")

    def _check_threshold(self) -> None:
        low, high = metric_range(self.metric)
        if not low <= self.threshold <= high:
            shown = f"{low:g} to {high:g}" if high != math.inf else f"{low:g} or more"
            raise InvalidInput(
                "threshold",
                f"{format_number(self.threshold)} is outside {self.metric}'s range ({shown})",
            )

    def describe(self) -> str:
        """'scale out by 1 when avg cpu_percent over 5m (1m grain) > 70, cooldown 5m'."""
        way = "out" if self.direction is Direction.INCREASE else "in"
        return (
            f"scale {way} by {self.count} when {self.statistic} {self.metric} "
            f"over {format_duration(self.window_seconds)} ({format_duration(self.grain_seconds)} grain) "
            f"{self.operator.symbol} {format_number(self.threshold)}, "
            f"cooldown {format_duration(self.cooldown_seconds)}"
        )

    def condition(self) -> str:
        """The rule's test alone: 'avg cpu_percent > 70'."""
        return f"{self.statistic} {self.metric} {self.operator.symbol} {format_number(self.threshold)}"


ACTIONS = ("increase", "decrease", "none", "held")


@dataclass
class Decision:
    """One evaluation's outcome, as ``flexvm autoscale history`` shows it.

    ``held`` means a rule wanted to act and something stopped it (the range limit, a cooldown,
    the flap guard); ``none`` means no rule wanted to act.
    """

    action: str  # one of ACTIONS
    current: int
    target: int
    reason: str
    rule_id: str | None = None  # the key of the rule that acted or was held
    evidence: dict[str, float | None] = field(default_factory=dict)  # each rule's value, by rule key


# A rule acts only on data covering at least this share of its window: a 10-minute rule does not
# scale a set in on the first 15 seconds measured (after a create, a restart, a gap).
MIN_WINDOW_COVERAGE = 0.5


def covers_window(oldest: float, now: float, rule: AutoscaleRule) -> bool:
    """Whether data starting at ``oldest`` covers enough of ``rule``'s window ending ``now``."""
    return now - oldest >= rule.window_seconds * MIN_WINDOW_COVERAGE


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: 0-100 for percents, 0 or more for rates."""
    return (0.0, 100.0) if metric in PERCENT else (0.0, math.inf)


def rescale(metric: str, value: float, from_count: float, to_count: float) -> float:
    """What ``value``, measured with ``from_count`` instances, becomes with ``to_count`` serving.

    The work is taken as conserved: a per-instance average spreads over the new count; a percent
    cannot pass 100 (the extra work queues instead); a set-wide total stays what it is.
    """
    if metric not in PER_INSTANCE or from_count == to_count:
        return value
    if to_count <= 0:
        return 100.0 if metric in PERCENT else math.inf
    moved = value * from_count / to_count
    return min(moved, 100.0) if metric in PERCENT else moved


def format_duration(seconds: float) -> str:
    """300 -> '5m', 130 -> '2m 10s', 5400 -> '1h 30m', 0 -> '0s'."""
    total = int(round(seconds))
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts)


def format_number(value: float) -> str:
    """70.0 -> '70', 0.5 -> '0.5', 1500000.0 -> '1500000' (never '1.5e+06' in a reason)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def contradictions(rules: list[AutoscaleRule], *, typical_count: int = 3) -> list[str]:
    """Warnings (not errors) for scale-out and scale-in rules that work against each other.

    Two kinds: the rules' firing ranges overlap (out when cpu > 50, in when cpu < 60: at 55
    both fire, out wins, and the set can never settle), and a scale-in threshold so near the
    scale-out one that removing one of ``typical_count`` instances pushes a per-instance
    average from the first past the second (the engine's flap guard then holds such scale-ins,
    so the set stays larger than the operator meant).
    """
    warnings = []
    for out_rule in (r for r in rules if r.direction is Direction.INCREASE):
        for in_rule in (r for r in rules if r.direction is Direction.DECREASE):
            if (out_rule.metric, out_rule.statistic) != (in_rule.metric, in_rule.statistic):
                continue
            both = _overlap_witness(_region(out_rule), _region(in_rule))
            if both is not None:
                warnings.append(
                    f"scale-out rule '{out_rule.key}' ({out_rule.condition()}) and scale-in rule "
                    f"'{in_rule.key}' ({in_rule.condition()}) both fire at {format_number(both)}: "
                    "scale-out wins there, and each action pushes the metric toward the other rule"
                )
            elif (close := _too_close(out_rule, in_rule, typical_count)) is not None:
                warnings.append(close)
    return warnings


# A firing region: a list of intervals (low, low_closed, high, high_closed).
_Interval = tuple[float, bool, float, bool]


def _region(rule: AutoscaleRule) -> list[_Interval]:
    t, inf = rule.threshold, math.inf
    return {
        Operator.GT: [(t, False, inf, False)],
        Operator.GE: [(t, True, inf, False)],
        Operator.LT: [(-inf, False, t, False)],
        Operator.LE: [(-inf, False, t, True)],
        Operator.EQ: [(t, True, t, True)],
        Operator.NE: [(-inf, False, t, False), (t, False, inf, False)],
    }[rule.operator]


def _overlap_witness(first: list[_Interval], second: list[_Interval]) -> float | None:
    """A value inside both regions, or None when they are disjoint."""
    for lo1, lc1, hi1, hc1 in first:
        for lo2, lc2, hi2, hc2 in second:
            lo, lo_closed = max((lo1, lc1), (lo2, lc2), key=lambda end: (end[0], not end[1]))
            hi, hi_closed = min((hi1, hc1), (hi2, hc2), key=lambda end: (end[0], end[1]))
            if lo < hi:
                if math.isinf(lo) and math.isinf(hi):
                    return 0.0
                if math.isinf(hi):
                    return lo if lo_closed else lo + 1
                if math.isinf(lo):
                    return hi if hi_closed else hi - 1
                return (lo + hi) / 2
            if lo == hi and lo_closed and hi_closed:
                return lo
    return None


def _too_close(out_rule: AutoscaleRule, in_rule: AutoscaleRule, typical_count: int) -> str | None:
    if out_rule.metric not in PER_INSTANCE or typical_count < 2:
        return None
    if out_rule.operator not in (Operator.GT, Operator.GE) or in_rule.operator not in (Operator.LT, Operator.LE):
        return None
    after = rescale(in_rule.metric, in_rule.threshold, typical_count, typical_count - 1)
    if not out_rule.operator.holds(after, out_rule.threshold):
        return None
    safe = out_rule.threshold * (typical_count - 1) / typical_count
    return (
        f"scale-in rule '{in_rule.key}' ({in_rule.condition()}) is close to scale-out rule "
        f"'{out_rule.key}' ({out_rule.condition()}): at {typical_count} instances, removing one turns "
        f"{format_number(in_rule.threshold)} into {after:.1f}, past the scale-out threshold; such scale-ins "
        f"will be held, so consider scaling in below {math.floor(safe)}"
    )
