"""Hosts as the services see them: drivers by host name, registration and accelerator choice."""

from __future__ import annotations

import builtins
import dataclasses
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from flexvm.capacity.fit import Allocation
from flexvm.compute.isolation import Isolator
from flexvm.drivers.base import Driver
from flexvm.errors import AlreadyExists, Conflict, FlexvmError, HypervisorUnavailable, InvalidInput
from flexvm.fencing.agents import check_options as check_fence_options
from flexvm.model.host import Accelerator, AcceleratorChoice, FenceAgent, Host, HostInfo, HostState
from flexvm.model.names import check_name
from flexvm.model.operation import Operation
from flexvm.operations.engine import UNFINISHED, Engine
from flexvm.operations.run import Run
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import HostRepo, LeftoverRepo, NetworkRepo, OperationRepo, VmRepo

T = TypeVar("T")

Connect = Callable[[str], Driver]
ProbeKernel = Callable[[], Path | None]
NOT_PROBED = "not probed yet: libvirt was unreachable"
DETAIL_TIMEOUT = 5.0  # `host show` lists the guests flexvm did not make; a host that hangs is not waited on


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

    def forget(self, uri: str) -> None:
        with self._lock:
            driver = self._drivers.pop(uri, None)
        if driver is not None:
            driver.close()

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
    leftovers: list[str]


URI_SCHEMES = {"qemu", "qemu+tcp", "qemu+ssh", "qemu+tls", "qemu+unix", "qemu+libssh2", "fake"}
BRIDGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # what Linux accepts as an interface name
RATIO_LIMITS = {"cpu_ratio": 64.0, "ram_ratio": 4.0, "disk_ratio": 20.0}


def check_uri(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme not in URI_SCHEMES:
        raise InvalidInput(
            "uri",
            f"'{uri}' is not a libvirt URI; use e.g. qemu:///system, "
            "qemu+tcp://10.0.0.2/system or qemu+ssh://root@h2/system",
        )
    if parsed.scheme != "fake" and parsed.path not in ("/system", "/session"):
        raise InvalidInput("uri", f"'{uri}' must end in /system (or /session)")
    if "+" in parsed.scheme and parsed.scheme != "qemu+unix" and not parsed.hostname:
        raise InvalidInput("uri", f"'{uri}' names a remote transport but no host")


def check_ratios(ratios: dict[str, float | None]) -> None:
    for field_name, value in ratios.items():
        if value is None:
            continue
        limit = RATIO_LIMITS[field_name]
        if not 1.0 <= value <= limit:
            raise InvalidInput(
                field_name,
                f"must be between 1 and {limit:g} (got {value:g}); below 1 would "
                "waste the host, above the limit would thrash it",
            )


@dataclass
class HostChanges:
    """What `host update` may change; None leaves a field as it is."""

    cpu_ratio: float | None = None
    ram_ratio: float | None = None
    disk_ratio: float | None = None
    fault_domain: str | None = None
    advertised_cpus: int | None = None
    advertised_memory_mib: int | None = None
    reserved_memory_mib: int | None = None
    network: str | None = None
    bridge: str | None = None
    fence_agent: FenceAgent | None = None
    fence_options: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fence_agent, str) and not isinstance(self.fence_agent, FenceAgent):
            self.fence_agent = FenceAgent(self.fence_agent)  # as a host.add operation records it

    def check(self) -> None:
        check_ratios({"cpu_ratio": self.cpu_ratio, "ram_ratio": self.ram_ratio, "disk_ratio": self.disk_ratio})
        if self.fault_domain is not None:
            check_name("fault_domain", self.fault_domain)
        if self.advertised_cpus is not None and not 1 <= self.advertised_cpus <= 4096:
            raise InvalidInput("cpus", f"must be between 1 and 4096 (got {self.advertised_cpus})")
        if self.advertised_memory_mib is not None and self.advertised_memory_mib < 256:
            raise InvalidInput("memory", "must be at least 256M")
        if self.reserved_memory_mib is not None and self.reserved_memory_mib < 0:
            raise InvalidInput("reserved_memory", "cannot be negative")
        if self.fence_agent is not None:
            check_fence_options(self.fence_agent, self.fence_options or {})
        if (self.network is None) != (self.bridge is None):
            raise InvalidInput("bridge", "a network and the host bridge that reaches it go together")
        if self.network is not None:
            check_name("network", self.network)
        if self.bridge is not None and not BRIDGE_NAME.fullmatch(self.bridge):
            raise InvalidInput(
                "bridge", f"{self.bridge!r} cannot be an interface name: 1-15 letters, digits, '.', '_' or '-'"
            )

    def given(self) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class HostRequest:
    """`host add`: where the host is, and its settings (ratios, fault domain, network…)."""

    name: str
    uri: str
    settings: HostChanges = dataclasses.field(default_factory=HostChanges)

    def check(self) -> None:
        check_name("name", self.name)
        check_uri(self.uri)
        self.settings.check()

    @property
    def network(self) -> str | None:
        return self.settings.network

    def to_host(self, info: HostInfo, accelerator: Accelerator, reason: str) -> Host:
        host = Host(
            name=self.name,
            uri=self.uri,
            state=HostState.UP,
            cpus=info.cpus,
            memory_mib=info.memory_mib,
            disk_capacity_bytes=info.disk_capacity_bytes,
            accelerator=accelerator,
            accelerator_reason=reason,
            libvirt_version=info.libvirt_version,
            hypervisor_version=info.hypervisor_version,
            hostname=info.hostname,
            cpu_model=info.cpu_model,
            last_seen=utcnow(),
        )
        for field_name, value in self.settings.given().items():
            setattr(host, field_name, value)
        check_fence_options(host.fence_agent, host.fence_options)
        return host


class HostService:
    def __init__(
        self, db: Database, drivers: DriverPool, probe_kernel: ProbeKernel, engine: Engine | None = None
    ) -> None:
        self.db = db
        self.drivers = drivers
        self.probe_kernel = probe_kernel
        self.engine = engine
        self.isolation = Isolator(db, self)
        if engine is not None:
            engine.register("host.add", self._add_work)

    def driver(self, host_name: str) -> Driver:
        with self.db.session() as session:
            host = HostRepo(session).get(host_name)
        return self.drivers.for_uri(host.uri)

    def list(self) -> builtins.list[Host]:
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
            on_host = repo.on_host(name)
            known = {vm.id for vm in repo.list()}
            allocated = Allocation(*repo.allocated_on(name))
            leftovers = [f"{item.kind} {item.name}" for item in LeftoverRepo(session).on_host(name)]
        unmanaged: builtins.list[str] = []
        if host.state is HostState.UP:
            try:
                guests = call_with_timeout(
                    self.drivers.for_uri(host.uri).list_guests,
                    DETAIL_TIMEOUT,
                    f"host {name} did not list its guests within {DETAIL_TIMEOUT:.0f} s",
                    key=f"list_guests {host.uri}",
                )
                unmanaged = sorted(g.name for g in guests if g.vm_id is None or g.vm_id not in known)
            except FlexvmError:
                pass  # a host that just went away still shows its record
        return HostDetail(host, [vm.name for vm in on_host], unmanaged, allocated, leftovers)

    # --- adding, changing, removing ------------------------------------------------------
    def add(self, request: HostRequest) -> Operation:
        """Register a host: its facts come from libvirt, its accelerator from a probe. As an
        operation, because probing a host that cannot run KVM guests takes a while."""
        request.check()
        assert self.engine is not None
        with self.db.session() as session:
            hosts = HostRepo(session)
            if hosts.find(request.name) is not None:
                raise AlreadyExists("host", request.name)
            same_uri = next((h.name for h in hosts.list() if h.uri == request.uri), None)
            if same_uri is not None:
                raise AlreadyExists("host with URI", f"{request.uri}' (registered as '{same_uri}")
            if request.network is not None:
                NetworkRepo(session).get(request.network)
            params = {"uri": request.uri, "settings": request.settings.given()}
            operation = self.engine.record(session, "host.add", "host", request.name, params=params)
        return self.engine.launch(operation)

    def _add_work(self, run: Run) -> dict[str, object]:
        request = HostRequest(
            run.operation.target_name, run.params["uri"], HostChanges(**run.params.get("settings", {}))
        )
        driver = self.drivers.for_uri(request.uri)
        info = run.step(
            "connect", lambda: dataclasses.asdict(driver.host_info()), detail=f"reading facts from {request.uri}"
        )
        choice = run.step(
            "probe",
            lambda: _choice_out(driver.probe_accelerator(self.probe_kernel())),
            detail="checking whether KVM really runs a guest here",
        )
        host = request.to_host(HostInfo(**info), Accelerator(choice["accelerator"]), choice["reason"])

        def register(session: Session) -> None:
            if HostRepo(session).find(host.name) is None:
                HostRepo(session).add(host)

        run.db_step("register", register, detail=f"registering host {host.name}")
        return {"accelerator": choice["accelerator"], "cpus": info["cpus"], "memory_mib": info["memory_mib"]}

    def update(self, name: str, changes: HostChanges) -> Host:
        changes.check()
        with self.db.session() as session:
            hosts = HostRepo(session)
            host = hosts.lock(name)
            if changes.fence_agent is not None and changes.fence_options is None:
                host.fence_options = {}  # another agent: the old one's options mean nothing to it
            for field_name, value in changes.given().items():
                setattr(host, field_name, value)
            check_fence_options(host.fence_agent, host.fence_options)
            if host.network is not None:
                NetworkRepo(session).get(host.network)
            hosts.save(host)
        return host

    def remove(self, name: str) -> None:
        with self.db.session() as session:
            hosts = HostRepo(session)
            host = hosts.lock(name)
            holding = [vm.name for vm in VmRepo(session).on_host(name)]
            if holding:
                raise Conflict(
                    f"host '{name}' still holds VMs: {', '.join(holding)}; delete or move them first",
                    details={"vms": holding},
                )
            hosts.delete(name)
        self.drivers.forget(host.uri)

    # --- registration of the server's own host ---------------------------------------------
    def register(self, name: str, uri: str) -> Host:
        """Read a host's facts and choose its accelerator, then record it."""
        driver = self.drivers.for_uri(uri)
        info = driver.host_info()
        choice = driver.probe_accelerator(self.probe_kernel())
        host = HostRequest(name, uri).to_host(info, choice.accelerator, choice.reason)
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

    def refresh(self, name: str, timeout: float | None = None) -> Host:
        """Re-read a host's facts; one that does not answer (within ``timeout``) is marked down."""
        host = self.get(name)
        try:
            info = call_with_timeout(
                lambda: self.drivers.for_uri(host.uri).host_info(),
                timeout,
                f"host {name} did not answer within {timeout} s",
                key=f"host_info {host.uri}",
            )
        except FlexvmError as err:
            failure: str | None = err.message
        else:
            failure = None
            host.cpus, host.memory_mib = info.cpus, info.memory_mib
            host.disk_capacity_bytes = info.disk_capacity_bytes
            host.libvirt_version, host.hypervisor_version = info.libvirt_version, info.hypervisor_version
            host.hostname, host.cpu_model = info.hostname, info.cpu_model
            host.last_seen = utcnow()
        with self.db.session() as session:
            current = HostRepo(session).find(name)
            if current is None:  # removed meanwhile
                return host
            # Only the facts and health are ours to write; ratios may have changed meanwhile.
            if failure is not None:
                _missed(current, failure)
            else:
                for field_name in (
                    "cpus",
                    "memory_mib",
                    "disk_capacity_bytes",
                    "libvirt_version",
                    "hypervisor_version",
                    "hostname",
                    "cpu_model",
                    "last_seen",
                ):
                    setattr(current, field_name, getattr(host, field_name))
                if current.state in (HostState.DOWN, HostState.SUSPECT) or (
                    current.state in (HostState.FAILED, HostState.FENCED) and not _fencing(session, name)
                ):
                    # Back before it was fenced (nothing was done), or back after its fence (and the
                    # restarts it ordered) ended: either way up.
                    current.set_state(HostState.UP)
                elif current.state is HostState.UP:
                    current.state_reason = ""
                current.suspect_since = None
            HostRepo(session).save(current)
            return current

    def reprobe(self, name: str) -> Host:
        host = self.get(name)
        choice = self.drivers.for_uri(host.uri).probe_accelerator(self.probe_kernel())
        with self.db.session() as session:
            current = HostRepo(session).lock(name)
            current.accelerator, current.accelerator_reason = choice.accelerator, choice.reason
            HostRepo(session).save(current)
        return current


def _missed(host: Host, failure: str) -> None:
    """A host did not answer its check. Without a fence agent it is down; with one it is suspect
    from its first miss (``suspect_since``): failure handling takes it further (compute.failover)."""
    if host.state is HostState.MAINTENANCE or host.state in (HostState.FAILED, HostState.FENCED):
        if host.state is HostState.MAINTENANCE:
            host.state_reason = failure
        return  # a failed host's reason says what is being done about it
    if host.fence_agent is FenceAgent.NONE:
        host.set_state(HostState.DOWN, failure)
        return
    if host.state is not HostState.SUSPECT:
        host.suspect_since = utcnow()
    host.set_state(HostState.SUSPECT, failure)


def _fencing(session: Session, host_name: str) -> bool:
    """Whether a fence of the host is under way (it is then not let back up until that ends)."""
    unfinished = OperationRepo(session).list(target=host_name, statuses=UNFINISHED)
    return any(op.kind == "host.fence" for op in unfinished)


# Calls given up on that have not returned yet, by key (what was asked of which host).
_awaited: dict[str, threading.Thread] = {}
_awaited_lock = threading.Lock()


def call_with_timeout(fn: Callable[[], T], timeout: float | None, message: str, key: str | None = None) -> T:
    """Run ``fn`` but give up waiting after ``timeout`` seconds (a hung connection must not hang
    the health check). The call itself may linger in its thread; its result is then ignored.

    With a ``key``, a call whose predecessor of the same key still lingers is not made: it fails
    at once. Calls on a connection to a host that is cut off only return when libvirt's keepalive
    closes it, and libvirt 9.0's client has been seen to crash the process when it closes one with
    many calls waiting on it; a health check every two seconds would otherwise pile them up."""
    if timeout is None:
        return fn()
    if key is not None:
        with _awaited_lock:
            earlier = _awaited.get(key)
            if earlier is not None and earlier.is_alive():
                raise HypervisorUnavailable(f"{message} (its previous call has not returned yet)")
            _awaited.pop(key, None)
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as err:  # handed to the caller below
            error.append(err)

    thread = threading.Thread(target=run, daemon=True, name="host-check")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if key is not None:
            with _awaited_lock:
                _awaited[key] = thread
        raise HypervisorUnavailable(message)
    if error:
        raise error[0]
    return result[0]


def _choice_out(choice: AcceleratorChoice) -> dict[str, str]:
    return {"accelerator": choice.accelerator.value, "reason": choice.reason}
