"""Series queries in the vocabulary autoscale rules use: metric, window, grain, statistic."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from flexvm.errors import InvalidInput, NotFound
from flexvm.model.autoscale import SCALESET_METRICS
from flexvm.model.metrics import HOST_METRICS, SCALESET_GAUGES, STATISTICS, VM_METRICS
from flexvm.model.times import parse_duration
from flexvm.store.db import Database
from flexvm.store.metrics import Bucket, MetricsRepo
from flexvm.store.repositories import HostRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo

MAX_WINDOW = 30 * 86400
MAX_POINTS = 2000
CATALOGUES = {"vm": VM_METRICS, "host": HOST_METRICS, "scaleset": {**SCALESET_METRICS, **SCALESET_GAUGES}}
SUBJECT_NAMES = {"vm": "VM", "host": "host", "scaleset": "scale set"}


@dataclass
class Series:
    kind: str
    subject: str
    metric: str
    statistic: str
    window_seconds: float
    grain_seconds: float
    source: str  # "raw" or "rollup"
    points: list[tuple[float, float]]  # (bucket start, value)
    samples: int = 0  # measurements behind the points

    def summary(self) -> float | None:
        """The statistic over the whole window (what an autoscale rule compares)."""
        if not self.points:
            return None
        values = [v for _, v in self.points]
        return {"avg": sum(values) / len(values), "min": min(values), "max": max(values)}[self.statistic]


class MetricsQuery:
    def __init__(self, db: Database, raw_retention: float, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.raw_retention = raw_retention
        self.clock = clock

    def series(
        self,
        kind: str,
        subject: str,
        metric: str,
        *,
        window: str = "1h",
        statistic: str = "avg",
        grain: str | None = None,
    ) -> Series:
        catalogue = CATALOGUES.get(kind)
        if catalogue is None:
            raise InvalidInput("kind", f"unknown kind '{kind}'; known: {', '.join(CATALOGUES)}")
        if metric not in catalogue:
            raise InvalidInput("metric", f"unknown {kind} metric '{metric}'; known: {', '.join(catalogue)}")
        if statistic not in STATISTICS:
            raise InvalidInput("statistic", f"unknown statistic '{statistic}'; known: {', '.join(STATISTICS)}")
        window_s = parse_duration(window, "window")
        if window_s > MAX_WINDOW:
            raise InvalidInput("window", f"at most {MAX_WINDOW // 86400} days")
        grain_s = parse_duration(grain, "grain") if grain else self._default_grain(window_s)
        if grain_s > window_s:
            raise InvalidInput("grain", "cannot be longer than the window")
        if window_s / grain_s > MAX_POINTS:
            raise InvalidInput("grain", f"too fine for that window: at most {MAX_POINTS} points")
        with self.db.session() as session:
            if not _exists(session, kind, subject) and not MetricsRepo(session).has_subject(kind, subject):
                raise NotFound(SUBJECT_NAMES[kind], subject)
            end = self.clock()
            start = end - window_s
            repo = MetricsRepo(session)
            # Raw samples while they are kept (they include the current minute); roll-ups beyond.
            use_raw = window_s <= self.raw_retention
            if use_raw:
                buckets = repo.raw_buckets(kind, subject, metric, start, end, grain_s)
            else:
                grain_s = max(60.0, grain_s - grain_s % 60)
                buckets = repo.rollup_buckets(kind, subject, metric, start, end, grain_s)
        return Series(
            kind,
            subject,
            metric,
            statistic,
            window_s,
            grain_s,
            "raw" if use_raw else "rollup",
            [(b.start, _pick(b, statistic)) for b in buckets],
            sum(b.count for b in buckets),
        )

    @staticmethod
    def _default_grain(window: float) -> float:
        for grain in (5, 15, 60, 300, 900, 3600):
            if window / grain <= 120:
                return float(grain)
        return 3600.0


def _exists(session: Session, kind: str, subject: str) -> bool:
    if kind == "vm":
        return VmRepo(session).find(subject) is not None
    if kind == "host":
        return HostRepo(session).find(subject) is not None
    return ScaleSetRepo(session).find(subject) is not None


def _pick(bucket: Bucket, statistic: str) -> float:
    return {"avg": bucket.avg, "min": bucket.min, "max": bucket.max}[statistic]
