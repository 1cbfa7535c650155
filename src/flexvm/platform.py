"""Wiring: builds the services from Settings. The API server and tests start here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flexvm.access.audit import AuditLog
from flexvm.access.projects import ProjectService
from flexvm.capacity.service import CapacityService
from flexvm.compute.availability import AvailabilitySetService
from flexvm.compute.booting import Booter
from flexvm.compute.consoles import ConsoleArchive
from flexvm.compute.drain import DrainService
from flexvm.compute.failover import Failover
from flexvm.compute.files import VmFiles
from flexvm.compute.health import HealthChecker
from flexvm.compute.hosts import DriverPool, HostService
from flexvm.compute.images import ImageService
from flexvm.compute.moving import VmMover
from flexvm.compute.networks import NetworkService
from flexvm.compute.reconcile import Reconciler, ReconcileReport
from flexvm.compute.resize import ResizeService
from flexvm.compute.sizes import SizeService
from flexvm.compute.storage import StorageService
from flexvm.compute.vm_create import VmCreator
from flexvm.compute.vm_delete import VmDeleter
from flexvm.compute.vm_disks import VmDisks
from flexvm.compute.vm_power import VmPower
from flexvm.compute.vm_records import VmRecords
from flexvm.compute.vms import VmService
from flexvm.config import Settings
from flexvm.drivers import connect as default_connect
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError
from flexvm.images.store import ImageStore
from flexvm.maintenance.rolling import Maintenance
from flexvm.monitor.advisor import Advisor
from flexvm.monitor.collector import MIN_INTERVAL, Collector, CollectorLoop, Retention
from flexvm.monitor.query import MetricsQuery
from flexvm.operations.engine import Engine, EngineSettings, Failpoint
from flexvm.scaling.autoscaler import AutoscaleService
from flexvm.scaling.balancer import LoadBalancer, http_probe
from flexvm.scaling.converge import Converger
from flexvm.scaling.loop import ScalingLoop
from flexvm.scaling.scalesets import ScaleSetService
from flexvm.scaling.set_metrics import SetMetrics
from flexvm.store.db import Database, open_database

log = logging.getLogger(__name__)

LOCAL_HOST = "local"


def find_probe_kernel(store: ImageStore, db: Database) -> Callable[[], Path | None]:
    """A Linux kernel to prove KVM with: Debian's installed one, else the tiny image's."""

    def find() -> Path | None:
        try:
            from flexvm.images.tiny.build import find_debian_kernel

            return find_debian_kernel().vmlinuz
        except FlexvmError:
            pass
        from flexvm.store.repositories import ImageRepo

        with db.session() as session:
            for image in ImageRepo(session).list():
                if image.kernel_file:
                    return store.path_of(image.kernel_file)
        return None

    return find


@dataclass
class Platform:
    settings: Settings
    db: Database
    engine: Engine
    drivers: DriverPool
    hosts: HostService
    sizes: SizeService
    images: ImageService
    records: VmRecords
    booter: Booter
    vms: VmService
    reconciler: Reconciler
    health: HealthChecker
    networks: NetworkService
    availability_sets: AvailabilitySetService
    capacity: CapacityService
    mover: VmMover
    resizer: ResizeService
    drains: DrainService
    files: VmFiles
    collector: Collector
    metrics: MetricsQuery
    advisor: Advisor
    balancer: LoadBalancer
    scale_sets: ScaleSetService
    autoscale: AutoscaleService
    projects: ProjectService
    audit: AuditLog
    storage: StorageService
    failover: Failover
    maintenance: Maintenance
    last_report: ReconcileReport | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sync_thread: threading.Thread | None = None
    _metrics_loop: CollectorLoop | None = None
    _scaling_loop: ScalingLoop | None = None
    collect_metrics: bool = True  # unit tests drive the collector by hand
    run_scaling: bool = True  # unit tests drive the scaling loop by hand

    @property
    def runner(self) -> Engine:
        """The operation engine (its older name; tests and tools wait on operations through it)."""
        return self.engine

    @classmethod
    def open(
        cls,
        settings: Settings,
        connect: Callable[[str], Driver] = default_connect,
        balancer: LoadBalancer | None = None,
        prober: Callable[[str, int, str], bool] = http_probe,
        failpoint: Failpoint | None = None,
    ) -> Platform:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = open_database(settings.db_url)
        engine = Engine(
            db,
            EngineSettings(
                lease_seconds=settings.lease_seconds,
                poll_seconds=settings.takeover_poll_seconds,
                failpoint=failpoint,
                crash_at=settings.crash_at,
            ),
        )
        drivers = DriverPool(connect)
        store = ImageStore(settings.images_dir)
        hosts = HostService(db, drivers, find_probe_kernel(store, db), engine)
        sizes = SizeService(db)
        images = ImageService(db, engine, store)
        networks = NetworkService(db)
        records = VmRecords(db, networks, ConsoleArchive(settings.home / "consoles"))
        booter = Booter(records, settings)
        creator = VmCreator(db, engine, hosts, sizes, images, networks, records, booter, settings)
        vms = VmService(
            records,
            hosts,
            creator,
            VmPower(db, engine, hosts, images, records, booter),
            VmDeleter(db, engine, hosts, records),
            VmDisks(db, engine, hosts, records),
        )
        reconciler = Reconciler(db, hosts, settings.health_timeout)
        failover = Failover(db, engine, hosts, images, records, booter, settings)
        failover.start_vm = vms.start
        health = HealthChecker(db, hosts, reconciler, settings.health_timeout, failover, guard=engine.leader.fenced)
        mover = VmMover(db, engine, hosts, images, records, booter, settings)
        drains = DrainService(db, engine, mover)
        retention = Retention(settings.metrics_raw_hours * 3600, settings.metrics_rollup_days * 86400)
        collector = Collector(
            db, hosts, max(settings.metrics_interval, MIN_INTERVAL), settings.health_timeout, retention
        )
        query = MetricsQuery(db, retention.raw_seconds)
        balancer = balancer or LoadBalancer(db, settings.lb_dir)
        converger = Converger(db, engine, vms, balancer, prober, settings.ready_timeout)
        scale_sets = ScaleSetService(db, engine, sizes, converger, settings)
        collector.derived_sources.append(SetMetrics(db, collector, balancer))
        return cls(
            settings,
            db,
            engine,
            drivers,
            hosts,
            sizes,
            images,
            records,
            booter,
            vms,
            reconciler,
            health,
            networks,
            AvailabilitySetService(db),
            CapacityService(db, sizes),
            mover,
            ResizeService(db, engine, hosts, sizes, images, records, booter, mover),
            drains,
            VmFiles(db, engine, hosts, sizes, images, records, creator, settings.home / "work"),
            collector,
            query,
            Advisor(db, query, sizes),
            balancer,
            scale_sets,
            AutoscaleService(db, scale_sets, query),
            ProjectService(db, hosts.isolation.forget),
            AuditLog(db),
            StorageService(db, hosts),
            failover,
            Maintenance(db, engine, hosts, drains, settings),
        )

    def start(self) -> ReconcileReport:
        """Register the local host, join the servers, take up what dead servers left, then keep
        in sync (the periodic work runs on whichever server leads)."""
        if self.settings.local_uri:
            host = self.hosts.ensure_registered(LOCAL_HOST, self.settings.local_uri)
            log.info(
                "host %s: %s, accelerator %s (%s)",
                host.name,
                host.state.value,
                host.accelerator.value,
                host.accelerator_reason,
            )
        self.images.sweep()  # what an upload or import cut short by a dead server left staged
        resumed = self.engine.start()
        self.last_report = self.reconciler.at_start(resumed)
        self._sync_thread = threading.Thread(target=self._sync_loop, name="flexvm-sync", daemon=True)
        self._sync_thread.start()
        leader = self.engine.leader
        if self.collect_metrics:
            self._metrics_loop = CollectorLoop(self.collector, leader)
            self._metrics_loop.start()
        if self.run_scaling:
            self._scaling_loop = ScalingLoop(
                self.scale_sets, self.autoscale, self.balancer, self.settings.scaling_seconds, leader
            )
            self._scaling_loop.start()
        return self.last_report

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.settings.health_seconds):
            try:
                self.engine.leader.as_leader(self.health.check_all)
            except Exception:  # the loop must outlive any one bad pass; the next one retries
                log.exception("periodic health check failed")

    def close(self) -> None:
        self._stop.set()
        if self._metrics_loop is not None:
            self._metrics_loop.stop()
        if self._scaling_loop is not None:
            self._scaling_loop.stop()
        self.engine.close()
        self.drivers.close()
        self.db.engine.dispose()

    def crash(self) -> None:
        """Stop as ``kill -9`` would (tests): nothing more is written; leases are left to run out."""
        self._stop.set()
        if self._metrics_loop is not None:
            self._metrics_loop.stop()
        if self._scaling_loop is not None:
            self._scaling_loop.stop()
        self.engine.abandon()
