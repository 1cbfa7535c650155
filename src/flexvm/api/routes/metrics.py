from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Query

from flexvm.api import schemas
from flexvm.api.access import Scope, platform_access, project_access
from flexvm.api.deps import named, platform
from flexvm.api.params import Name
from flexvm.model.access import Right
from flexvm.monitor.query import Series
from flexvm.platform import Platform

router = APIRouter(tags=["metrics"])


def _out(series: Series) -> schemas.SeriesOut:
    return schemas.SeriesOut(**dataclasses.asdict(series), summary=series.summary())


@router.get("/vms/{name}/metrics", response_model=schemas.SeriesOut)
def vm_metrics(
    name: Name,
    metric: str = "cpu_percent",
    window: str = "1h",
    statistic: str = "avg",
    grain: str | None = None,
    scope: Scope = project_access(Right.READ),
    p: Platform = Depends(platform),
) -> schemas.SeriesOut:
    return _out(p.metrics.series("vm", scope.key(name), metric, window=window, statistic=statistic, grain=grain))


@router.get("/hosts/{name}/metrics", response_model=schemas.SeriesOut)
def host_metrics(
    name: Name,
    metric: str = "cpu_percent",
    window: str = "1h",
    statistic: str = "avg",
    grain: str | None = None,
    scope: Scope = platform_access(Right.READ),
    p: Platform = Depends(platform),
) -> schemas.SeriesOut:
    return _out(p.metrics.series("host", named("name", name), metric, window=window, statistic=statistic, grain=grain))


@router.get("/metrics/latest", response_model=list[schemas.LatestOut])
def latest(
    max_age: float | None = Query(None, ge=0),
    scope: Scope = platform_access(Right.READ),
    p: Platform = Depends(platform),
) -> list[schemas.LatestOut]:
    return [schemas.LatestOut(**dataclasses.asdict(item)) for item in p.collector.latest(max_age)]


@router.get("/advisor", response_model=schemas.AdvisorOut)
def advisor(
    window: str = "1h", scope: Scope = platform_access(Right.READ), p: Platform = Depends(platform)
) -> schemas.AdvisorOut:
    report = p.advisor.advise(window)
    return schemas.AdvisorOut(
        window=report.window,
        not_enough_data=report.not_enough_data,
        advice=[schemas.AdviceOut(**dataclasses.asdict(a)) for a in report.advice],
    )
