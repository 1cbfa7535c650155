"""Scale-set tests on the fake driver: an in-memory HAProxy that records what it was told, and a
platform whose load balancer drives it and whose probe answers as the test says."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flexvm.config import Settings
from flexvm.drivers import connect
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import NotFound
from flexvm.platform import Platform
from flexvm.scaling.balancer import LoadBalancer
from flexvm.scaling.haproxy import Frontend, FrontendStatus, ServerStatus
from tests.conftest import close_platform
from tests.unit.pool_helpers import add_host, wait_for


@dataclass
class FakeHAProxy:
    """What flexvm's LoadBalancer asks of HAProxy, kept in memory with a log of every call."""

    is_running: bool = False
    config: list[Frontend] = field(default_factory=list)
    applied: list[list[Frontend]] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)  # ("drain", vm), ("apply", "web-0,web-1")
    draining: set[str] = field(default_factory=set)
    requests_total: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    state_saves: int = 0

    def apply(self, frontends: list[Frontend]) -> None:
        self.is_running = True
        self.config = list(frontends)
        self.applied.append(list(frontends))
        self.log.append(("apply", ",".join(b.name for f in frontends for b in f.backends)))

    def drain(self, frontend: str, server: str, timeout: float) -> bool:
        if server not in self.backends(frontend):  # as HAProxy's runtime API answers
            raise NotFound("server", f"{frontend}/{server}")
        self.draining.add(server)
        self.log.append(("drain", server))
        return True

    def running(self) -> bool:
        return self.is_running

    def save_state(self) -> None:
        self.state_saves += 1

    def ensure_running(self, frontends: list[Frontend]) -> bool:
        if self.is_running:
            return False
        self.restarts += 1
        self.apply(frontends)
        return True

    def servers(self) -> list[ServerStatus]:
        return [
            ServerStatus(f.name, b.name, "DRAIN" if b.name in self.draining else "UP", "L7OK", 0, 0)
            for f in self.config
            for b in f.backends
        ]

    def frontends(self) -> dict[str, FrontendStatus]:
        return {f.name: FrontendStatus(f.name, self.requests_total.get(f.name, 0), 0) for f in self.config}

    def stop(self) -> None:
        self.is_running = False
        self.config = []
        self.log.append(("stop", ""))

    def backends(self, name: str) -> list[str]:
        return sorted(b.name for f in self.config if f.name == name for b in f.backends)


@dataclass
class Probe:
    """The instances' health as the test decides it: addresses in ``failing`` never answer, and
    while ``answering`` is clear every probe waits (up to 10 s), holding its operation mid-way."""

    failing: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)
    answering: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.answering.set()

    def __call__(self, address: str, port: int, path: str) -> bool:
        self.answering.wait(10)
        self.seen.append(address)
        return address not in self.failing


def settle(platform: Platform, name: str, timeout: float = 30.0) -> None:
    """Wait until no operation works on the set and it has as many instances as it wants (an
    operation on the fake driver can finish before the test even looks for it)."""

    def settled() -> bool:
        scale_set = platform.scale_sets.get(name)
        running = scale_set.active_operation_id in platform.runner.running()
        return not running and len(platform.scale_sets.instances(name)) == scale_set.capacity

    wait_for(settled, timeout, f"scale set {name} to settle")


@dataclass
class ScalingPlatform:
    platform: Platform
    haproxy: FakeHAProxy
    probe: Probe
    hosts: dict[str, FakeDriver]


@pytest.fixture
def scaling(tmp_path: Path, db_url: str) -> Iterator[ScalingPlatform]:
    """No local host; three fake hosts (fault domains fd1, fd2, fd3) on network 'lan'."""
    settings = Settings(home=tmp_path / "home", db_url=db_url, local_uri="", ready_timeout=2.0, stop_timeout=2.0)
    haproxy = FakeHAProxy()
    probe = Probe()
    platform = Platform.open(settings, connect, balancer=None, prober=probe)
    platform.balancer.haproxy = haproxy  # type: ignore[assignment]
    platform.collect_metrics = False
    platform.run_scaling = False
    platform.start()
    try:
        dhcp = tmp_path / "dhcp"
        dhcp.mkdir()
        platform.networks.create("lan", "10.213.0.0/24", "10.213.0.10", "10.213.0.99", dhcp_hosts_dir=str(dhcp))
        hosts = {
            name: add_host(platform, name, network="lan", bridge="br-lan", fault_domain=f"fd{n}")
            for n, name in enumerate(("a", "b", "c"), start=1)
        }
        yield ScalingPlatform(platform, haproxy, probe, hosts)
    finally:
        close_platform(platform)


__all__ = ["FakeHAProxy", "LoadBalancer", "Probe", "ScalingPlatform", "scaling", "settle"]
