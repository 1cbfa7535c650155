"""Autoscale rules for the engine's and the backtest's tests: the common shape, the rest by keyword."""

from __future__ import annotations

from flexvm.model.autoscale import AutoscaleRule


def rule(
    direction: str,
    operator: str,
    threshold: float,
    *,
    metric: str = "cpu_percent",
    statistic: str = "avg",
    count: int = 1,
    cooldown: float = 300.0,
    window: float = 300.0,
    grain: float = 60.0,
    id: str = "",
) -> AutoscaleRule:
    return AutoscaleRule(metric, statistic, grain, window, operator, threshold, direction, count, cooldown, id)
