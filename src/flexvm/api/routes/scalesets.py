"""Scale sets and their autoscale: the set's operations, its profile and rules, history and backtest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from flexvm.api import schemas
from flexvm.api.access import Scope, project_access
from flexvm.api.deps import accepted, image_in_scope, platform
from flexvm.api.params import Name
from flexvm.errors import InvalidInput
from flexvm.model.access import Right
from flexvm.model.autoscale import AutoscaleProfile, AutoscaleRule
from flexvm.model.scaleset import ScaleSet
from flexvm.platform import Platform
from flexvm.scaling.autoscaler import profile_of, rules_of
from flexvm.scaling.backtest import Backtest, render_timeline
from flexvm.scaling.scalesets import ScaleSetSpec

router = APIRouter(prefix="/scalesets", tags=["scale sets"])

# The model's field names, as this API (and the CLI's options) call them.
API_FIELDS = {
    "min_count": "min",
    "max_count": "max",
    "default_count": "default",
    "grain_seconds": "grain",
    "window_seconds": "window",
    "cooldown_seconds": "cooldown",
    "direction": "action",
}
MAX_HISTORY = 1000


@contextmanager
def api_fields(prefix: str = "") -> Iterator[None]:
    """Bad input named in the request's words: 'min', not the model's 'min_count'."""
    try:
        yield
    except InvalidInput as err:
        field = API_FIELDS.get(err.field, err.field)
        if not prefix and field == err.field:
            raise
        message = err.message.removeprefix(f"{err.field}: ")
        raise InvalidInput(f"{prefix}{field}", message, details=err.details | {"field": f"{prefix}{field}"}) from err


# --- shapes ----------------------------------------------------------------------------------


def rule_out(rule: AutoscaleRule) -> schemas.AutoscaleRuleOut:
    return schemas.AutoscaleRuleOut(
        id=rule.id,
        metric=rule.metric,
        statistic=rule.statistic,
        grain_seconds=rule.grain_seconds,
        window_seconds=rule.window_seconds,
        operator=rule.operator.value,
        threshold=rule.threshold,
        action=rule.direction.value,
        count=rule.count,
        cooldown_seconds=rule.cooldown_seconds,
        description=rule.describe(),
    )


def profile_out(profile: AutoscaleProfile) -> schemas.AutoscaleProfileOut:
    return schemas.AutoscaleProfileOut(min=profile.min_count, max=profile.max_count, default=profile.default_count)


def set_out(p: Platform, scale_set: ScaleSet) -> schemas.ScaleSetOut:
    lb = scale_set.load_balancer
    profile = profile_of(scale_set)
    states = Counter(instance.state.value for instance in p.scale_sets.members(scale_set.name))
    return schemas.ScaleSetOut(
        name=scale_set.name,
        size=scale_set.size,
        image=scale_set.image,
        capacity=scale_set.capacity,
        fault_domains=scale_set.fault_domains,
        scale_in_policy=scale_set.scale_in_policy.value,
        load_balancer=(
            schemas.LoadBalancerOut(
                bind_address=lb.bind_address, port=lb.port, backend_port=lb.backend_port, probe_path=lb.probe_path
            )
            if lb
            else None
        ),
        network=scale_set.network,
        model_version=scale_set.model_version,
        max_unavailable=scale_set.max_unavailable,
        active_operation_id=scale_set.active_operation_id,
        error=scale_set.error,
        replaced=scale_set.replaced,
        autoscale=profile_out(profile) if profile else None,
        rules=[rule_out(rule) for rule in rules_of(scale_set)],
        created_at=scale_set.created_at,
        instances=dict(sorted(states.items())),
    )


def rule_in(body: schemas.AutoscaleRuleIn, prefix: str = "") -> AutoscaleRule:
    """The rule in the body, checked, its errors named as the body names its fields."""
    with api_fields(prefix):
        rule = AutoscaleRule.written(
            metric=body.metric,
            statistic=body.statistic,
            grain=body.grain,
            window=body.window,
            operator=body.operator,
            threshold=body.threshold,
            action=body.action,
            count=body.count,
            cooldown=body.cooldown,
        )
        rule.check()
    return rule


def profile_in(body: schemas.AutoscaleProfileIn, prefix: str = "") -> AutoscaleProfile:
    profile = AutoscaleProfile(body.min, body.max, body.default)
    with api_fields(prefix):
        profile.check()
    return profile


def simulation_out(backtest: Backtest) -> schemas.SimulationOut:
    span = backtest.span
    return schemas.SimulationOut(
        start=span.start,
        end=span.end,
        step_seconds=span.step,
        timeline=[
            schemas.TimelineEntryOut(
                at=at,
                current=decision.current,
                count=count,
                action=decision.action,
                target=decision.target,
                reason=decision.reason,
                rule_id=decision.rule_id,
            )
            for at, count, decision in backtest.timeline
        ],
        max_count=backtest.max_count,
        min_count=backtest.min_count,
        actions=backtest.actions,
        flaps=[
            schemas.FlapOut(
                first_at=f.first_at,
                first_from=f.first_from,
                first_to=f.first_to,
                second_at=f.second_at,
                second_from=f.second_from,
                second_to=f.second_to,
                kind=f.kind,
            )
            for f in backtest.flaps
        ],
        flap_window_seconds=backtest.flap_window,
        instance_minutes=backtest.instance_minutes,
        recorded_instance_minutes=backtest.recorded_instance_minutes,
        text=render_timeline(backtest),
    )


# --- the set ---------------------------------------------------------------------------------


@router.get("", response_model=list[schemas.ScaleSetOut])
def list_sets(scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)) -> list[schemas.ScaleSetOut]:
    return [set_out(p, s) for s in p.scale_sets.list() if scope.owns(s.name)]


@router.post("", status_code=202, response_model=schemas.OperationOut)
def create_set(
    body: schemas.ScaleSetCreate, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    spec = ScaleSetSpec(
        name=scope.key(body.name),
        size=body.size,
        image=image_in_scope(p, scope, body.image),
        instances=body.instances,
        lb_port=body.lb_port,
        lb_bind=body.lb_bind,
        probe_path=body.probe_path,
        fault_domains=body.fault_domains,
        user_data=body.user_data,
        scale_in_policy=body.scale_in_policy,
        max_unavailable=body.max_unavailable,
    )
    return accepted(p.scale_sets.create(spec))


@router.get("/{name}", response_model=schemas.ScaleSetOut)
def show_set(
    name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.ScaleSetOut:
    return set_out(p, p.scale_sets.get(scope.key(name)))


@router.delete("/{name}", status_code=202, response_model=schemas.OperationOut)
def delete_set(
    name: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.scale_sets.delete(scope.key(name)))


@router.post("/{name}/scale", status_code=202, response_model=schemas.OperationOut)
def scale_set(
    name: Name, body: schemas.ScaleRequest, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> JSONResponse:
    return accepted(p.scale_sets.scale(scope.key(name), body.instances))


@router.post("/{name}/update", status_code=202, response_model=schemas.OperationOut)
def update_set(
    name: Name,
    body: schemas.ScaleSetUpdate,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> JSONResponse:
    operation = p.scale_sets.update_model(
        scope.key(name), size=body.size, image=body.image, max_unavailable=body.max_unavailable
    )
    return accepted(operation)


@router.get("/{name}/instances", response_model=list[schemas.InstanceOut])
def list_instances(
    name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
) -> list[schemas.InstanceOut]:
    return [schemas.InstanceOut(**view.to_dict()) for view in p.scale_sets.instances(scope.key(name))]


# --- autoscale -------------------------------------------------------------------------------


@router.put("/{name}/autoscale", response_model=schemas.AutoscaleProfileOut)
def set_profile(
    name: Name,
    body: schemas.AutoscaleProfileIn,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> schemas.AutoscaleProfileOut:
    name = scope.key(name)  # its key from here on
    with api_fields():
        profile = p.autoscale.set_profile(name, body.min, body.max, body.default)
    return profile_out(profile)


@router.delete("/{name}/autoscale", status_code=204)
def disable(name: Name, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)) -> Response:
    p.autoscale.disable(scope.key(name))
    return Response(status_code=204)


@router.get("/{name}/autoscale/rules", response_model=list[schemas.AutoscaleRuleOut])
def list_rules(
    name: Name, scope: Scope = project_access(Right.READ), p: Platform = Depends(platform)
) -> list[schemas.AutoscaleRuleOut]:
    return [rule_out(rule) for rule in p.autoscale.rules(scope.key(name))]


@router.post("/{name}/autoscale/rules", status_code=201, response_model=schemas.AddedRuleOut)
def add_rule(
    name: Name,
    body: schemas.AutoscaleRuleIn,
    scope: Scope = project_access(Right.CHANGE),
    p: Platform = Depends(platform),
) -> schemas.AddedRuleOut:
    name = scope.key(name)  # its key from here on
    with api_fields():
        added = p.autoscale.add_rule(name, rule_in(body))
    return schemas.AddedRuleOut(rule=rule_out(added.rule), warnings=added.warnings)


@router.delete("/{name}/autoscale/rules/{rule_id}", status_code=204)
def remove_rule(
    name: Name, rule_id: str, scope: Scope = project_access(Right.CHANGE), p: Platform = Depends(platform)
) -> Response:
    p.autoscale.remove_rule(scope.key(name), rule_id)
    return Response(status_code=204)


@router.get("/{name}/autoscale/history", response_model=list[schemas.AutoscaleEventOut])
def history(
    name: Name,
    limit: int = Query(50, ge=1, le=MAX_HISTORY),
    scope: Scope = project_access(Right.READ),
    p: Platform = Depends(platform),
) -> list[schemas.AutoscaleEventOut]:
    return [
        schemas.AutoscaleEventOut(
            at=event.at,
            action=event.action,
            current=event.current,
            target=event.target,
            reason=event.reason,
            rule_id=event.rule_id,
            evidence=event.evidence,
        )
        for event in p.autoscale.history(scope.key(name), limit)
    ]


@router.post("/{name}/autoscale/simulate", response_model=schemas.SimulationOut)
def simulate(
    name: Name,
    body: schemas.SimulateRequest,
    scope: Scope = project_access(Right.READ),
    p: Platform = Depends(platform),
) -> schemas.SimulationOut:
    name = scope.key(name)  # its key from here on
    rules = [rule_in(r, f"rules.{i}.") for i, r in enumerate(body.rules)] if body.rules is not None else None
    profile = profile_in(body.profile, "profile.") if body.profile is not None else None
    with api_fields():
        backtest = p.autoscale.simulate(
            name,
            body.start,
            body.to,
            rules=rules,
            profile=profile,
            step=body.step,
            synthetic=body.synthetic,
            flap_guard=body.flap_guard,
        )
    return simulation_out(backtest)
