"""The scale sets' load balancer: HAProxy made to match the store, kept running, and measured.

The store is the truth: every sync renders all frontends from it (each set with a load balancer,
its serving instances as backends) and hands them to HAProxy, which reloads without dropping a
connection. A HAProxy that was killed is started again from the same truth.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from flexvm.errors import NotFound
from flexvm.model.scaleset import InstanceState
from flexvm.scaling.haproxy import Backend, Frontend, HAProxy, LoadBalancerError
from flexvm.store.db import Database
from flexvm.store.repositories import VmRepo
from flexvm.store.scaling import ScaleSetRepo

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0


def http_probe(address: str, port: int, path: str) -> bool:
    """One GET; True when it answers 200. Proxies are ignored: the instance is on our own network."""
    host = f"[{address}]" if ":" in address else address
    try:
        response = httpx.get(f"http://{host}:{port}{path}", timeout=PROBE_TIMEOUT, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


@dataclass
class SetTraffic:
    """What the load balancer saw for one set, as counters and gauges."""

    requests_total: int
    healthy_backends: int
    backends: int
    at: float


class LoadBalancer:
    def __init__(self, db: Database, run_dir: Path, haproxy: HAProxy | None = None) -> None:
        self.db = db
        self.haproxy = haproxy or HAProxy(run_dir)
        self._lock = threading.Lock()  # one reload at a time: converges and the loop both sync

    def frontends(self) -> list[Frontend]:
        with self.db.session() as session:
            sets = ScaleSetRepo(session)
            vms = {vm.name: vm for vm in VmRepo(session).list()}
            frontends = []
            for scale_set in sets.list():
                lb = scale_set.load_balancer
                if lb is None:
                    continue
                backends = []
                for instance in sets.instances(scale_set.name):
                    vm = vms.get(instance.vm_name)
                    ip = next((nic.ip for nic in vm.nics if nic.ip), None) if vm else None
                    if instance.state == InstanceState.SERVING and ip:
                        backends.append(Backend(instance.vm_name, ip, lb.backend_port))
                frontends.append(
                    Frontend(scale_set.name, lb.bind_address, lb.port, lb.backend_port, tuple(backends), lb.probe_path)
                )
        return frontends

    def sync(self) -> None:
        with self._lock:
            frontends = self.frontends()
            if not frontends:  # no set needs a load balancer (the last one was deleted)
                if self.haproxy.running():
                    self.haproxy.stop()
                return
            self.haproxy.apply(frontends)

    def drain(self, scale_set: str, vm_name: str, timeout: float) -> bool:
        """True when the instance has no requests left; one HAProxy does not know (never added,
        or already removed) has none."""
        with self._lock:
            if not self.haproxy.running():
                return True
        try:
            return self.haproxy.drain(scale_set, vm_name, timeout)
        except NotFound:
            return True

    def statuses(self, scale_set: str) -> dict[str, str]:
        if not self.haproxy.running():
            return {}
        return {s.server: s.status for s in self.haproxy.servers() if s.frontend == scale_set}

    def wait_up(self, scale_set: str, vm_name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.statuses(scale_set).get(vm_name) == "UP":
                with contextlib.suppress(LoadBalancerError):  # gone meanwhile: keep_running restarts it
                    self.haproxy.save_state()  # a HAProxy restarted from now on brings it back UP
                return True
            time.sleep(0.2)
        return False

    def keep_running(self) -> bool:
        """Start HAProxy again if it died (True when it had to). The loop calls this every pass."""
        with self._lock:
            frontends = self.frontends()
            if not frontends:  # the last set is gone: so is the need for a load balancer
                if self.haproxy.running():
                    self.haproxy.stop()
                return False
            restarted = self.haproxy.ensure_running(frontends)
            if not restarted:
                # Health seen since the last change (a server that went DOWN, or came back) is
                # kept for the next restart too.
                with contextlib.suppress(LoadBalancerError):
                    self.haproxy.save_state()
        if restarted:
            log.warning("the load balancer was not running; started it with %d frontends", len(frontends))
        return restarted

    def traffic(self) -> dict[str, SetTraffic]:
        if not self.haproxy.running():
            return {}
        now = time.time()
        servers = self.haproxy.servers()
        result = {}
        for name, status in self.haproxy.frontends().items():
            mine = [s for s in servers if s.frontend == name]
            healthy = sum(1 for s in mine if s.status.startswith("UP"))
            result[name] = SetTraffic(status.requests_total, healthy, len(mine), now)
        return result

    def stop(self) -> None:
        with self._lock:
            self.haproxy.stop()
