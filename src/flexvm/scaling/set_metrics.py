"""A scale set's own series, derived after each collector round: its instances' metrics averaged,
its instance counts, and the load balancer's request rate and healthy backends.

Autoscale rules read these (kind "scaleset"), the backtest replays them, /metrics exports them.
An average is over the serving instances that reported this round; with none, there is no
sample (a gap, so a rule sees "no data", never a made-up zero).
"""

from __future__ import annotations

from flexvm.model.autoscale import PER_INSTANCE
from flexvm.model.scaleset import InstanceState
from flexvm.monitor.collector import Collector
from flexvm.scaling.balancer import LoadBalancer, SetTraffic
from flexvm.store.db import Database
from flexvm.store.metrics import Sample
from flexvm.store.scaling import ScaleSetRepo

AVERAGED = sorted(PER_INSTANCE - {"requests_per_instance_per_s"})


class SetMetrics:
    def __init__(self, db: Database, collector: Collector, balancer: LoadBalancer | None) -> None:
        self.db = db
        self.collector = collector
        self.balancer = balancer
        self._previous: dict[str, SetTraffic] = {}

    def __call__(self, now: float) -> list[Sample]:
        fresh = self.collector.latest(max_age=self.collector.interval * 2.5)
        vm_values = {item.subject: item.values for item in fresh if item.kind == "vm"}
        traffic = self.balancer.traffic() if self.balancer is not None else {}
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            members = {s.name: sets.instances(s.name) for s in sets.list()}
        samples = []
        for name, instances in members.items():
            serving = [i.vm_name for i in instances if i.state == InstanceState.SERVING]
            values = {
                "instances": float(sum(1 for i in instances if i.state != InstanceState.LEAVING)),
                "serving_instances": float(len(serving)),
            }
            reported = [vm_values[vm] for vm in serving if vm in vm_values]
            for metric in AVERAGED:
                seen = [v[metric] for v in reported if metric in v]
                if seen:
                    values[metric] = sum(seen) / len(seen)
            values.update(self._traffic_values(name, traffic.get(name), len(serving)))
            self.collector.remember("scaleset", name, now, values, {"scale_set": name})
            samples += [Sample(now, "scaleset", name, metric, value) for metric, value in values.items()]
        for gone in set(self._previous) - set(members):
            del self._previous[gone]
        return samples

    def _traffic_values(self, name: str, now: SetTraffic | None, serving: int) -> dict[str, float]:
        if now is None:
            return {}
        values = {"healthy_backends": float(now.healthy_backends)}
        before = self._previous.get(name)
        self._previous[name] = now
        # HAProxy's counters restart with a new process (it was killed and started again): a
        # counter that went down gives no rate this round rather than a negative one.
        if before is not None and now.at > before.at and now.requests_total >= before.requests_total:
            rate = (now.requests_total - before.requests_total) / (now.at - before.at)
            values["requests_per_s"] = rate
            values["requests_per_instance_per_s"] = rate / max(1, serving)
        return values
