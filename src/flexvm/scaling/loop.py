"""The scaling loop: every few seconds, keep the load balancer alive, let autoscale decide, and heal
sets that drifted from their record (an instance died, the server restarted mid-scale).

One pass is a list of independent chores; a chore that fails is logged and the next pass retries,
so one broken set never stops the others from scaling.
"""

from __future__ import annotations

import logging
import threading

from flexvm.operations.leader import LeaderLease as Leader
from flexvm.scaling.autoscaler import AutoscaleService
from flexvm.scaling.balancer import LoadBalancer
from flexvm.scaling.scalesets import ScaleSetService

log = logging.getLogger(__name__)


class ScalingLoop:
    def __init__(
        self,
        scale_sets: ScaleSetService,
        autoscale: AutoscaleService,
        balancer: LoadBalancer,
        interval: float,
        leader: Leader | None = None,
    ) -> None:
        self.leader = leader  # with several servers, only the leader scales and keeps HAProxy
        self.scale_sets = scale_sets
        self.autoscale = autoscale
        self.balancer = balancer
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scaling", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.leader is None:
                self.run_once()
                continue
            try:
                self.leader.as_leader(self.run_once)
            except Exception:
                log.exception("scaling pass failed")

    def run_once(self) -> None:
        try:
            self.balancer.keep_running()
        except Exception:
            log.exception("could not keep the load balancer running")
        for scale_set in self.scale_sets.list():
            for chore in (self.autoscale.evaluate, self.scale_sets.heal):
                try:
                    chore(scale_set.name)
                except Exception:
                    log.exception("scale set %s: %s failed", scale_set.name, chore.__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
