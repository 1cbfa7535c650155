"""The collector: every interval, each up host's counters are read (with a deadline), turned into
rates against the previous reading, stored, and kept as the latest values for /metrics and top.

A host that does not answer leaves a gap (no samples), not zeros. A guest whose counters start
again (restarted, moved) gives no rate for that interval. Once a minute the finished minutes are
rolled up, and samples and roll-ups older than their retention are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flexvm.compute.hosts import HostService, call_with_timeout
from flexvm.errors import FlexvmError
from flexvm.model.host import Host, HostState
from flexvm.model.metrics import GuestCounters, HostCounters, HostReading
from flexvm.model.vm import Vm
from flexvm.monitor import rates
from flexvm.operations.leader import LeaderLease as Leader
from flexvm.store.db import Database
from flexvm.store.metrics import MetricsRepo, Sample
from flexvm.store.repositories import VmRepo
from flexvm.store.scaling import ScaleSetRepo

log = logging.getLogger(__name__)

MIN_INTERVAL = 1.0


@dataclass
class Latest:
    """The newest values of one subject, with what they are about (labels for Prometheus and top)."""

    kind: str
    subject: str
    at: float
    values: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Retention:
    raw_seconds: float = 6 * 3600
    rollup_seconds: float = 7 * 86400


class Collector:
    def __init__(
        self,
        db: Database,
        hosts: HostService,
        interval: float,
        timeout: float,
        retention: Retention = Retention(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval < MIN_INTERVAL:
            raise ValueError(f"the metrics interval must be at least {MIN_INTERVAL} s")
        self.db = db
        self.hosts = hosts
        self.interval = interval
        self.timeout = timeout
        self.retention = retention
        self.clock = clock
        self._previous_hosts: dict[str, HostCounters] = {}
        self._previous_guests: dict[tuple[str, str], GuestCounters] = {}
        self._latest: dict[tuple[str, str], Latest] = {}
        self._lock = threading.Lock()
        self._rolled_up_to: float | None = None
        self.cpu_seconds_last = 0.0  # the collector's own cost, last round
        # More samples derived after each round from what it read (scale sets' aggregates): a
        # plug-in point, so monitoring needs to know nothing of the layers that use it.
        self.derived_sources: list[Callable[[float], list[Sample]]] = []
        self._scale_set_of: dict[str, str] = {}

    # --- a round -------------------------------------------------------------------------
    def collect(self) -> int:
        """One round over every up host; returns how many samples were stored."""
        started = time.process_time()
        hosts = [h for h in self.hosts.list() if h.state is HostState.UP]
        readings: dict[str, HostReading] = {}
        if hosts:
            with ThreadPoolExecutor(max_workers=min(16, len(hosts)), thread_name_prefix="collect") as pool:
                for host, reading in zip(hosts, pool.map(self._read, hosts), strict=True):
                    if reading is not None:
                        readings[host.name] = reading
        with self.db.session() as session:
            vms = {vm.domain_name: vm for vm in VmRepo(session).list()}
            allocations = VmRepo(session).allocations()
            self._scale_set_of = ScaleSetRepo(session).set_of_each_vm()
        samples = []
        for host in hosts:
            reading = readings.get(host.name)
            if reading is not None:
                samples += self._host_samples(host, reading, vms, allocations.get(host.name, (0, 0, 0)))
        for source in self.derived_sources:
            try:
                samples += source(self.clock())
            except Exception:  # one bad source must not cost the round its VM and host samples
                log.exception("a derived metrics source failed")
        with self.db.session() as session:
            stored = MetricsRepo(session).add(samples)
        self._maintain()
        self.cpu_seconds_last = time.process_time() - started
        return stored

    def _read(self, host: Host) -> HostReading | None:
        try:
            driver = self.hosts.drivers.for_uri(host.uri)
            return call_with_timeout(
                driver.read_counters,
                self.timeout,
                f"host {host.name} did not report its counters within {self.timeout} s",
                key=f"read_counters {host.uri}",
            )
        except FlexvmError as err:
            log.info("no metrics from host %s this round: %s", host.name, err.message)  # a gap, not zeros
            return None

    def _host_samples(
        self, host: Host, reading: HostReading, vms: dict[str, Vm], allocation: tuple[int, int, int]
    ) -> list[Sample]:
        now = reading.host.at
        samples: list[Sample] = []
        values = rates.host_gauges(reading.host)
        previous = self._previous_hosts.get(host.name)
        if previous is not None:
            values.update(rates.host_rates(previous, reading.host))
        self._previous_hosts[host.name] = reading.host
        running = [g for g in reading.guests if g.running]
        values.update(
            {
                "vm_count": float(len(running)),
                "vcpus_allocated": float(allocation[0]),
                "memory_allocated_mib": float(allocation[1]),
            }
        )
        samples += self._remember("host", host.name, now, values, {"host": host.name})
        seen = set()
        for guest in running:
            vm = vms.get(guest.name)
            if vm is None or (guest.vm_id is not None and guest.vm_id != vm.id):
                continue  # a guest flexvm does not manage
            key = (host.name, guest.name)
            seen.add(key)
            values = rates.guest_gauges(guest)
            before = self._previous_guests.get(key)
            if before is not None:
                values.update(rates.guest_rates(before, guest))
            self._previous_guests[key] = guest
            labels = {
                "vm": vm.name,
                "host": host.name,
                "size": vm.size,
                "scale_set": self._scale_set_of.get(vm.name, ""),
            }
            samples += self._remember("vm", vm.name, guest.at, values, labels)
        for key in [k for k in self._previous_guests if k[0] == host.name and k not in seen]:
            del self._previous_guests[key]  # stopped or gone: its next reading starts afresh
            with self._lock:
                self._latest.pop(("vm", key[1]), None)
        return samples

    def remember(self, kind: str, subject: str, at: float, values: dict[str, float], labels: dict[str, str]) -> None:
        """Keep a derived subject's newest values too (for /metrics and top)."""
        self._remember(kind, subject, at, values, labels)

    def _remember(
        self, kind: str, subject: str, at: float, values: dict[str, float], labels: dict[str, str]
    ) -> list[Sample]:
        with self._lock:
            self._latest[(kind, subject)] = Latest(kind, subject, at, dict(values), labels)
        return [Sample(at, kind, subject, metric, value) for metric, value in values.items()]

    def _maintain(self) -> None:
        """Roll up every finished minute not yet rolled up, then apply retention."""
        now = self.clock()
        this_minute = now - now % 60
        with self.db.session() as session:
            repo = MetricsRepo(session)
            start = self._rolled_up_to
            if start is None:
                oldest = repo.oldest_raw()
                start = this_minute if oldest is None else oldest - oldest % 60
            if this_minute > start:
                repo.roll_up(start, this_minute)
                self._rolled_up_to = this_minute
            repo.forget(raw_before=now - self.retention.raw_seconds, rollups_before=now - self.retention.rollup_seconds)

    # --- reading back --------------------------------------------------------------------
    def latest(self, max_age: float | None = None) -> list[Latest]:
        """The newest values per subject (older than ``max_age`` seconds left out)."""
        now = self.clock()
        with self._lock:
            items = list(self._latest.values())
        if max_age is not None:
            items = [item for item in items if now - item.at <= max_age]
        return sorted(items, key=lambda item: (item.kind, item.subject))

    def forget_vm(self, name: str) -> None:
        with self._lock:
            self._latest.pop(("vm", name), None)


class CollectorLoop:
    """Runs the collector every interval on a daemon thread until stopped."""

    def __init__(self, collector: Collector, leader: Leader | None = None) -> None:
        self.collector = collector
        self.leader = leader  # with several servers, only the leader collects
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self.leader is None:
                    self.collector.collect()
                else:
                    self.leader.as_leader(self.collector.collect)
            except Exception:  # one bad round must not end monitoring; the next one retries
                log.exception("metrics round failed")
            self._stop.wait(max(self.collector.interval - (time.monotonic() - started), 0.1))

    def stop(self) -> None:
        self._stop.set()
