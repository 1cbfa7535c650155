"""GET /metrics: the latest values in Prometheus' exposition format, labelled for dashboards."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

from flexvm.model.autoscale import SCALESET_METRICS
from flexvm.model.metrics import HOST_METRICS, SCALESET_GAUGES, VM_METRICS
from flexvm.monitor.collector import Collector

VM_LABELS = ("vm", "host", "size", "scale_set")
HOST_LABELS = ("host",)
SCALESET_LABELS = ("scale_set",)
FAMILIES = (
    ("vm", VM_METRICS, VM_LABELS),
    ("host", HOST_METRICS, HOST_LABELS),
    ("scaleset", {**SCALESET_METRICS, **SCALESET_GAUGES}, SCALESET_LABELS),
)


class LatestValues(PrometheusCollector):
    """Reads the collector's latest values at scrape time (no second copy to keep in step)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        latest = self.collector.latest(max_age=max(self.collector.interval * 3, 60))
        for kind, catalogue, labels in FAMILIES:
            for metric, help_text in catalogue.items():
                family = GaugeMetricFamily(f"flexvm_{kind}_{metric}", help_text, labels=list(labels))
                for item in latest:
                    if item.kind == kind and metric in item.values:
                        family.add_metric(
                            [item.labels.get(label, "") for label in labels], item.values[metric], timestamp=item.at
                        )
                yield family


def exposition(collector: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LatestValues(collector))
    return generate_latest(registry)
