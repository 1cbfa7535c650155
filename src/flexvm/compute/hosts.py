"""Hosts as the services see them: drivers by host name, registration and accelerator choice."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flexvm.capacity.fit import Allocation
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError, HypervisorUnavailable
from flexvm.model.host import Accelerator, Host, HostState
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import HostRepo, VmRepo

Connect = Callable[[str], Driver]
ProbeKernel = Callable[[], Path | None]
NOT_PROBED = "not probed yet: libvirt was unreachable"


class DriverPool:
    """One driver per host, opened on first use and reused (libvirt connections are costly)."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._drivers: dict[str, Driver] = {}
        self._lock = threading.Lock()

    def for_uri(self, uri: str) -> Driver:
        with self._lock:
            driver = self._drivers.get(uri)
            if driver is None:
                driver = self._drivers[uri] = self._connect(uri)
            return driver

    def close(self) -> None:
        with self._lock:
            for driver in self._drivers.values():
                driver.close()
            self._drivers.clear()


@dataclass
class HostDetail:
    host: Host
    vms: list[str]
    unmanaged_guests: list[str]
    allocated: Allocation


class HostService:
    def __init__(self, db: Database, drivers: DriverPool, probe_kernel: ProbeKernel) -> None:
        self.db = db
        self.drivers = drivers
        self.probe_kernel = probe_kernel

    def driver(self, host_name: str) -> Driver:
        with self.db.session() as session:
            host = HostRepo(session).get(host_name)
        return self.drivers.for_uri(host.uri)

    def list(self) -> list[Host]:
        with self.db.session() as session:
            return HostRepo(session).list()

    def get(self, name: str) -> Host:
        with self.db.session() as session:
            return HostRepo(session).get(name)

    def detail(self, name: str) -> HostDetail:
        """A host with what runs on it: flexvm's VMs, the guests it did not make, what is claimed."""
        with self.db.session() as session:
            host = HostRepo(session).get(name)
            repo = VmRepo(session)
            vms = repo.list()
            allocated = Allocation(*repo.allocated_on(name))
        unmanaged: list[str] = []
        try:
            known = {vm.id for vm in vms}
            guests = self.drivers.for_uri(host.uri).list_guests()
            unmanaged = sorted(g.name for g in guests if g.vm_id is None or g.vm_id not in known)
        except FlexvmError:
            pass  # a down host still shows its record
        return HostDetail(host, [vm.name for vm in vms if name in (vm.host, vm.disk_host)], unmanaged, allocated)

    def register(self, name: str, uri: str) -> Host:
        """Read a host's facts and choose its accelerator, then record it."""
        driver = self.drivers.for_uri(uri)
        info = driver.host_info()
        choice = driver.probe_accelerator(self.probe_kernel())
        host = Host(
            name=name,
            uri=uri,
            state=HostState.UP,
            cpus=info.cpus,
            memory_mib=info.memory_mib,
            disk_capacity_bytes=info.disk_capacity_bytes,
            accelerator=choice.accelerator,
            accelerator_reason=choice.reason,
            libvirt_version=info.libvirt_version,
            hypervisor_version=info.hypervisor_version,
            hostname=info.hostname,
            cpu_model=info.cpu_model,
            last_seen=utcnow(),
        )
        with self.db.session() as session:
            HostRepo(session).add(host)
        return host

    def ensure_registered(self, name: str, uri: str) -> Host:
        """Register the server's own host on first start; later starts refresh its facts.

        A libvirtd that is not running does not stop the server: the host is recorded down with
        the reason, and comes up at the next refresh.
        """
        with self.db.session() as session:
            existing = HostRepo(session).find(name)
        if existing is None:
            try:
                return self.register(name, uri)
            except HypervisorUnavailable as err:
                host = Host(
                    name=name,
                    uri=uri,
                    state=HostState.DOWN,
                    cpus=0,
                    memory_mib=0,
                    disk_capacity_bytes=0,
                    accelerator=Accelerator.TCG,
                    accelerator_reason=NOT_PROBED,
                    libvirt_version="",
                    hypervisor_version="",
                    state_reason=err.message,
                )
                with self.db.session() as session:
                    HostRepo(session).add(host)
                return host
        host = self.refresh(name)
        if host.state is HostState.UP and host.accelerator_reason == NOT_PROBED:
            host = self.reprobe(name)
        return host

    def refresh(self, name: str) -> Host:
        host = self.get(name)
        try:
            info = self.drivers.for_uri(host.uri).host_info()
        except FlexvmError as err:
            if host.state is not HostState.MAINTENANCE:
                host.state = HostState.DOWN
            host.state_reason = err.message
        else:
            host.cpus, host.memory_mib = info.cpus, info.memory_mib
            host.disk_capacity_bytes = info.disk_capacity_bytes
            host.libvirt_version, host.hypervisor_version = info.libvirt_version, info.hypervisor_version
            host.hostname, host.cpu_model = info.hostname, info.cpu_model
            if host.state is HostState.DOWN:
                host.state = HostState.UP
            host.state_reason = ""
            host.last_seen = utcnow()
        with self.db.session() as session:
            HostRepo(session).save(host)
        return host

    def reprobe(self, name: str) -> Host:
        host = self.get(name)
        choice = self.drivers.for_uri(host.uri).probe_accelerator(self.probe_kernel())
        host.accelerator, host.accelerator_reason = choice.accelerator, choice.reason
        with self.db.session() as session:
            HostRepo(session).save(host)
        return host
