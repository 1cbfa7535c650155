"""Autoscale on a live scale set (fake driver): rules read the set's recorded series, act on the
capacity, record every action and hold-back, and the set's own series are derived right."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flexvm.errors import InvalidInput, NotFound
from flexvm.model.autoscale import AutoscaleRule
from flexvm.monitor.collector import Latest
from flexvm.monitor.prometheus import exposition
from flexvm.scaling.scalesets import ScaleSetSpec
from flexvm.scaling.set_metrics import SetMetrics
from flexvm.store.metrics import MetricsRepo, Sample
from flexvm.store.scaling import ScaleSetRepo
from tests.unit.flex_helpers import quick_image
from tests.unit.pool_helpers import run
from tests.unit.scaling_helpers import ScalingPlatform, scaling, settle  # noqa: F401 (a fixture)


def rule(direction: str, operator: str, threshold: float, **kw: float) -> AutoscaleRule:
    return AutoscaleRule(
        metric=str(kw.pop("metric", "cpu_percent")),
        statistic="avg",
        grain_seconds=kw.pop("grain", 5),
        window_seconds=kw.pop("window", 30),
        operator=operator,  # type: ignore[arg-type]
        threshold=threshold,
        direction=direction,  # type: ignore[arg-type]
        count=int(kw.pop("count", 1)),
        cooldown_seconds=kw.pop("cooldown", 60),
    )


@pytest.fixture
def web(scaling: ScalingPlatform, small_disk: Path) -> ScalingPlatform:  # noqa: F811
    """Set 'web' of 2 instances, autoscaled 1..4 (default 2): out when cpu > 70, in when cpu < 20."""
    p = scaling.platform
    quick_image(p, small_disk)
    run(p, p.scale_sets.create(ScaleSetSpec("web", "Standard_B1ls", "img", 2, lb_port="8080:80")), timeout=30)
    p.autoscale.set_profile("web", 1, 4, 2)
    p.autoscale.add_rule("web", rule("increase", "gt", 70))
    p.autoscale.add_rule("web", rule("decrease", "lt", 20))
    return scaling


def record(s: ScalingPlatform, metric: str, value: float, seconds: int = 30) -> None:
    now = time.time()
    with s.platform.db.session() as session:
        MetricsRepo(session).add(Sample(now - age, "scaleset", "web", metric, value) for age in range(seconds))


def test_a_busy_set_grows_and_the_action_is_recorded_with_its_evidence(web: ScalingPlatform) -> None:
    p = web.platform
    record(web, "cpu_percent", 90.0)
    decision = p.autoscale.evaluate("web")
    assert decision is not None and (decision.action, decision.current, decision.target) == ("increase", 2, 3)
    assert p.scale_sets.get("web").capacity == 3
    operation_id = p.scale_sets.get("web").active_operation_id
    assert operation_id is not None  # the converge started at once
    waiting = p.autoscale.evaluate("web")  # while it runs, autoscale waits for it
    assert waiting is not None and waiting.action == "held" and "still changing to 3" in waiting.reason
    p.runner.wait(operation_id, 30)
    assert len(p.scale_sets.instances("web")) == 3
    events = p.autoscale.history("web")
    assert [(e.action, e.current, e.target, e.rule_id) for e in events] == [
        ("increase", 2, 3, "r1"),
        ("held", 3, 3, None),
    ]
    assert events[0].evidence["r1"] == pytest.approx(90.0)


def test_autoscale_waits_while_the_set_is_still_changing(web: ScalingPlatform) -> None:
    p = web.platform
    gate = threading.Event()
    p.engine.register("test.hold", lambda run: {"released": gate.wait(10)})
    with p.db.session() as session:  # an operation on the set that runs until the test lets it end
        sets = ScaleSetRepo(session)
        scale_set = sets.lock("web")
        operation = p.runner.record(session, "test.hold", "scaleset", "web")
        scale_set.active_operation_id = operation.id
        sets.save(scale_set)
    p.runner.launch(operation)
    record(web, "cpu_percent", 90.0)
    waiting = p.autoscale.evaluate("web")
    assert waiting is not None and waiting.action == "held" and "still changing to 2" in waiting.reason
    assert p.scale_sets.get("web").capacity == 2
    gate.set()
    p.runner.wait(operation.id, 10)
    acted = p.autoscale.evaluate("web")
    assert acted is not None and (acted.action, acted.target) == ("increase", 3)


def test_cooldown_holds_the_next_action_and_says_how_long_is_left(web: ScalingPlatform) -> None:
    p = web.platform
    record(web, "cpu_percent", 90.0)
    p.autoscale.evaluate("web")
    settle(p, "web")
    held = p.autoscale.evaluate("web")
    assert held is not None and held.action == "held" and "cooldown" in held.reason
    assert p.scale_sets.get("web").capacity == 3
    p.autoscale.evaluate("web")  # the same hold again within ten minutes is not recorded twice
    assert [e.action for e in p.autoscale.history("web")] == ["increase", "held"]


def test_an_idle_set_shrinks_but_never_below_min(web: ScalingPlatform) -> None:
    p = web.platform
    record(web, "cpu_percent", 5.0)
    first = p.autoscale.evaluate("web")
    assert first is not None and (first.action, first.target) == ("decrease", 1)
    settle(p, "web")
    assert len(p.scale_sets.instances("web")) == 1
    with p.db.session() as session:  # long past the cooldown
        sets = ScaleSetRepo(session)
        scale_set = sets.get("web")
        scale_set.last_scale_at = time.time() - 3600
        sets.save(scale_set)
    held = p.autoscale.evaluate("web")
    assert held is not None and held.action == "held" and "min" in held.reason


def test_no_metrics_means_at_least_the_default_count(web: ScalingPlatform) -> None:
    p = web.platform
    run(p, p.scale_sets.scale("web", 1), timeout=30)
    decision = p.autoscale.evaluate("web")  # nothing recorded at all
    assert decision is not None and (decision.action, decision.target) == ("increase", 2)
    assert "no metrics" in decision.reason


def test_bad_profiles_and_rules_are_refused(web: ScalingPlatform) -> None:
    p = web.platform
    with pytest.raises(InvalidInput, match="min"):
        p.autoscale.set_profile("web", 5, 3, 4)
    with pytest.raises(InvalidInput, match="default"):
        p.autoscale.set_profile("web", 1, 3, 7)
    with pytest.raises(InvalidInput, match="range"):
        p.autoscale.add_rule("web", rule("increase", "gt", 140))
    with pytest.raises(InvalidInput, match="cpu_percent, "):
        p.autoscale.add_rule("web", rule("increase", "gt", 1, metric="load_average"))
    with pytest.raises(InvalidInput, match="grains per window"):
        p.autoscale.add_rule("web", rule("increase", "gt", 70, grain=1, window=86400))
    with pytest.raises(InvalidInput, match="no rule 'r9'"):
        p.autoscale.remove_rule("web", "r9")
    with pytest.raises(NotFound):
        p.autoscale.set_profile("nope", 1, 2, 1)
    # A contradicting rule is stored, with a warning.
    added = p.autoscale.add_rule("web", rule("decrease", "lt", 80))
    assert added.rule.id == "r3" and added.warnings
    assert [r.id for r in p.autoscale.rules("web")] == ["r1", "r2", "r3"]
    # So is a rule that could act again on data measured before its own last action.
    hasty = p.autoscale.add_rule("web", rule("increase", "gt", 90, window=120, cooldown=30))
    assert any("r4: its cooldown (30s) is shorter than its window (2m)" in w for w in hasty.warnings), hasty.warnings


def test_manual_scaling_stays_inside_the_autoscale_range(web: ScalingPlatform) -> None:
    with pytest.raises(InvalidInput, match="autoscale range 1-4"):
        web.platform.scale_sets.scale("web", 6)


def test_set_metrics_average_serving_instances_and_derive_the_request_rate(web: ScalingPlatform) -> None:
    p = web.platform
    now = time.time()
    for vm, cpu in (("web-0", 80.0), ("web-1", 40.0)):
        p.collector.remember("vm", vm, now, {"cpu_percent": cpu, "memory_used_percent": 30.0}, {"vm": vm})
    source = SetMetrics(p.db, p.collector, p.balancer)
    web.haproxy.requests_total["web"] = 1000
    first = {s.metric: s.value for s in source(now)}
    assert first["cpu_percent"] == pytest.approx(60.0) and first["instances"] == 2.0
    assert first["serving_instances"] == 2.0 and first["healthy_backends"] == 2.0
    assert "requests_per_s" not in first  # one reading of a counter is no rate yet
    web.haproxy.requests_total["web"] = 1300
    time.sleep(0.05)
    second = {s.metric: s.value for s in source(time.time())}
    assert second["requests_per_s"] > 1000  # 300 requests in ~50 ms
    assert second["requests_per_instance_per_s"] == pytest.approx(second["requests_per_s"] / 2)
    web.haproxy.requests_total["web"] = 5  # HAProxy started again: its counters restarted
    third = {s.metric: s.value for s in source(time.time())}
    assert "requests_per_s" not in third  # a gap, never a negative rate
    assert isinstance(p.collector.latest()[0], Latest)
    assert any(item.kind == "scaleset" and item.subject == "web" for item in p.collector.latest())
    # Exported for Prometheus with the set as label (parsed by prometheus-client's own parser).
    families = {f.name: f for f in text_string_to_metric_families(exposition(p.collector).decode())}
    [cpu] = families["flexvm_scaleset_cpu_percent"].samples
    assert (cpu.labels, cpu.value) == ({"scale_set": "web"}, pytest.approx(60.0))


def test_simulate_replays_recorded_metrics_and_a_synthetic_day(web: ScalingPlatform) -> None:
    p = web.platform
    now = time.time()
    with p.db.session() as session:
        repo = MetricsRepo(session)
        repo.add(Sample(now - 600 + t, "scaleset", "web", "cpu_percent", 90.0 if t < 300 else 5.0) for t in range(600))
        repo.add(Sample(now - 600 + t, "scaleset", "web", "instances", 2.0) for t in range(600))
    backtest = p.autoscale.simulate("web", now - 600, now, step=5)
    assert backtest.max_count > 2 and backtest.counts[-1][1] < backtest.max_count
    day = p.autoscale.simulate("web", now - now % 86400, now, step=60, synthetic=True)
    assert day.max_count <= 4 and day.min_count >= 1 and day.actions > 0
    with pytest.raises(InvalidInput, match="no recorded metrics"):
        p.autoscale.simulate("web", now - 7200, now - 3600)
