"""Metric samples and roll-ups: bulk writes, per-minute aggregation, retention, series queries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from flexvm.store.tables import MetricRollupRow, MetricSampleRow


@dataclass(frozen=True)
class Sample:
    ts: float
    kind: str
    subject: str
    metric: str
    value: float


@dataclass(frozen=True)
class Bucket:
    """One point of a series: the statistic of the values in [start, start + grain)."""

    start: float
    avg: float
    min: float
    max: float
    count: int


class MetricsRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, samples: Iterable[Sample]) -> int:
        rows = [
            {"ts": s.ts, "kind": s.kind, "subject": s.subject, "metric": s.metric, "value": s.value} for s in samples
        ]
        if rows:
            self.session.execute(insert(MetricSampleRow), rows)
        return len(rows)

    def roll_up(self, start: float, end: float) -> int:
        """Aggregate the raw samples of whole minutes in [start, end) into per-minute rows (again is
        harmless: a minute already rolled up is replaced)."""
        minute = func.floor(MetricSampleRow.ts / 60) * 60
        query = (
            select(
                MetricSampleRow.kind,
                MetricSampleRow.subject,
                MetricSampleRow.metric,
                minute.label("minute"),
                func.avg(MetricSampleRow.value),
                func.min(MetricSampleRow.value),
                func.max(MetricSampleRow.value),
                func.count(),
            )
            .where(MetricSampleRow.ts >= start, MetricSampleRow.ts < end)
            .group_by(MetricSampleRow.kind, MetricSampleRow.subject, MetricSampleRow.metric, minute)
        )
        rows = [
            {"kind": k, "subject": s, "metric": m, "minute": float(t), "avg": a, "min": lo, "max": hi, "count": n}
            for k, s, m, t, a, lo, hi, n in self.session.execute(query)
        ]
        self.session.execute(
            delete(MetricRollupRow).where(MetricRollupRow.minute >= start, MetricRollupRow.minute < end)
        )
        if rows:
            self.session.execute(insert(MetricRollupRow), rows)
        return len(rows)

    def forget(self, *, raw_before: float, rollups_before: float) -> None:
        self.session.execute(delete(MetricSampleRow).where(MetricSampleRow.ts < raw_before))
        self.session.execute(delete(MetricRollupRow).where(MetricRollupRow.minute < rollups_before))

    def raw_buckets(self, kind: str, subject: str, metric: str, start: float, end: float, grain: float) -> list[Bucket]:
        bucket = func.floor(MetricSampleRow.ts / grain) * grain
        query = (
            select(
                bucket,
                func.avg(MetricSampleRow.value),
                func.min(MetricSampleRow.value),
                func.max(MetricSampleRow.value),
                func.count(),
            )
            .where(
                MetricSampleRow.kind == kind,
                MetricSampleRow.subject == subject,
                MetricSampleRow.metric == metric,
                MetricSampleRow.ts >= start,
                MetricSampleRow.ts < end,
            )
            .group_by(bucket)
            .order_by(bucket)
        )
        return [Bucket(float(t), a, lo, hi, n) for t, a, lo, hi, n in self.session.execute(query)]

    def rollup_buckets(
        self, kind: str, subject: str, metric: str, start: float, end: float, grain: float
    ) -> list[Bucket]:
        """Minute roll-ups regrouped into ``grain`` (a multiple of 60 s): averages weighted by count."""
        bucket = func.floor(MetricRollupRow.minute / grain) * grain
        query = (
            select(
                bucket,
                func.sum(MetricRollupRow.avg * MetricRollupRow.count),
                func.min(MetricRollupRow.min),
                func.max(MetricRollupRow.max),
                func.sum(MetricRollupRow.count),
            )
            .where(
                MetricRollupRow.kind == kind,
                MetricRollupRow.subject == subject,
                MetricRollupRow.metric == metric,
                MetricRollupRow.minute >= start,
                MetricRollupRow.minute < end,
            )
            .group_by(bucket)
            .order_by(bucket)
        )
        return [Bucket(float(t), total / n, lo, hi, n) for t, total, lo, hi, n in self.session.execute(query) if n]

    def oldest_raw(self) -> float | None:
        value = self.session.execute(select(func.min(MetricSampleRow.ts))).scalar()
        return None if value is None else float(value)

    def has_subject(self, kind: str, subject: str) -> bool:
        """Whether anything is stored about ``subject`` (one indexed lookup, not a scan)."""
        for table in (MetricSampleRow, MetricRollupRow):
            found = self.session.execute(
                select(table.kind).where(table.kind == kind, table.subject == subject).limit(1)
            ).first()
            if found is not None:
                return True
        return False

    def subjects(self, kind: str) -> list[str]:
        query = select(MetricSampleRow.subject).where(MetricSampleRow.kind == kind).distinct()
        return sorted(self.session.scalars(query))
