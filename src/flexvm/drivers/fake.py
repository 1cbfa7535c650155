"""FakeDriver: an in-memory hypervisor that keeps libvirt's semantics without running anything.

What it models, because services depend on it:
- guests are defined (persistent), started, shut down (ACPI: the guest powers off after
  ``shutdown_delay`` unless ``ignores_shutdown``), destroyed and undefined, with the refusals both
  drivers share: starting a running guest, defining a taken name, undefining a running guest
  (libvirt itself would make it transient; flexvm's drivers refuse); undefining an unknown one
  is a no-op;
- starting a guest claims its memory from the host and stopping releases it; a start that
  would exceed the host's memory fails, as QEMU's allocation would;
- the instance and image pools are dicts of volumes; an overlay needs its backing volume;
- a started guest "boots": after ``ready_delay`` seconds its console log shows the tiny
  image's readiness line (``ready_delay=None``: it never becomes ready);
- any method can be told to fail: ``fail_next("define")`` makes the next call raise;
- shared storage is one dict of volumes per path, seen by every fake host that reaches it
  (``FakeHost.unreachable_stores`` lists the paths a host cannot reach); a disk on it that a
  running guest holds cannot be opened by a second guest, as libvirt's lock manager refuses.

Instances are shared per URI (``fake://name``), so a test and the server see the same host.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

from flexvm.drivers.base import Driver
from flexvm.errors import AlreadyExists, HypervisorError, InvalidState
from flexvm.model.guest import (
    GuestInfo,
    GuestNic,
    GuestSpec,
    GuestState,
    MemoryStats,
    MigrationProgress,
    MigrationRequest,
    MigrationResult,
)
from flexvm.model.host import Accelerator, AcceleratorChoice, HostInfo
from flexvm.model.metrics import GuestCounters, HostCounters, HostReading
from flexvm.model.network import Isolation
from flexvm.model.storage import SharedStorage
from flexvm.model.units import GIB, MIB


@dataclass
class FakeGuest:
    spec: GuestSpec
    state: GuestState = GuestState.SHUTOFF
    started_at: float = 0.0
    boots: int = 0
    shutdown_requested_at: float | None = None
    ready_boot: int = 0  # the boot whose readiness line has been printed
    # Live shape, changed by hot-plug and the balloon; starts as the spec says.
    vcpus: int = 0
    plugged_mib: int = 0
    balloon_mib: int | None = None
    dimms: int = 0
    used_mib: int = 64  # what the simulated guest uses; tests raise it to see a shrink refused
    snapshots: dict[str, tuple[GuestState, dict[str, bytes]]] = field(default_factory=dict)
    cpu_load: float = 0.02  # share of each vCPU busy, for read_counters; tests raise it
    disk_rate: float = 0.0  # bytes per second read and written
    net_rate: float = 0.0  # bytes per second received and sent
    # What read_counters has accumulated, and up to when (per boot).
    cpu_ns: float = 0.0
    disk_bytes: float = 0.0
    net_bytes: float = 0.0
    counted_at: float = 0.0
    counted_boot: int = 0

    def __post_init__(self) -> None:
        self.vcpus = self.vcpus or self.spec.vcpus
        self.plugged_mib = self.plugged_mib or self.spec.memory_mib

    @property
    def memory_mib(self) -> int:
        return self.balloon_mib if self.balloon_mib is not None else self.plugged_mib


@dataclass
class FakeVolume:
    size: int
    backing: str | None = None
    data: bytes = b""


@dataclass
class FakeHost:
    cpus: int = 8
    memory_mib: int = 32768
    disk_bytes: int = 500 * GIB
    guests: dict[str, FakeGuest] = field(default_factory=dict)
    images: dict[str, FakeVolume] = field(default_factory=dict)
    instances: dict[str, FakeVolume] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    ready_delay: float | None = 0.0
    shutdown_delay: float = 0.0
    ignores_shutdown: bool = False
    reachable: bool = True
    isolations: dict[str, Isolation] = field(default_factory=dict)  # filter name -> what it lets through
    unreachable_stores: set[str] = field(default_factory=set)  # shared paths this host cannot reach


class FakeDriver(Driver):
    _hosts: ClassVar[dict[str, FakeHost]] = {}
    _stores: ClassVar[dict[str, dict[str, FakeVolume]]] = {}  # shared path -> its volumes
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, uri: str, host: FakeHost) -> None:
        self.uri = uri
        self.host = host
        self._lock = threading.RLock()

    @classmethod
    def for_uri(cls, uri: str) -> FakeDriver:
        """``fake://name?cpus=8&memory_mib=32768`` — the same in-memory host for the same name."""
        parsed = urlparse(uri)
        key = parsed.netloc or parsed.path
        with cls._registry_lock:
            host = cls._hosts.get(key)
            if host is None:
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                host = FakeHost(
                    cpus=int(query.get("cpus", 8)),
                    memory_mib=int(query.get("memory_mib", 32768)),
                    disk_bytes=int(query.get("disk_gib", 500)) * GIB,
                )
                cls._hosts[key] = host
        return cls(uri, host)

    @classmethod
    def with_host(cls, uri: str, host: FakeHost) -> FakeDriver:
        """Make ``host`` the in-memory host of ``uri`` from now on (tests restore a saved state)."""
        key = urlparse(uri).netloc or urlparse(uri).path
        with cls._registry_lock:
            cls._hosts[key] = host
        return cls(uri, host)

    @classmethod
    def reset_all(cls) -> None:
        with cls._registry_lock:
            cls._hosts.clear()
            cls._stores.clear()

    # --- failure injection ---------------------------------------------------------------
    def fail_next(self, method: str, times: int = 1) -> None:
        self.host.failures[method] = times

    def _check(self, method: str) -> None:
        if not self.host.reachable:
            from flexvm.errors import HypervisorUnavailable

            raise HypervisorUnavailable(f"{method}: fake host {self.uri} is unreachable")
        left = self.host.failures.get(method, 0)
        if left > 0:
            self.host.failures[method] = left - 1
            raise HypervisorError(f"{method}: injected failure on {self.uri}")

    def _volumes(self, store: SharedStorage | None) -> dict[str, FakeVolume]:
        """The host's instance pool, or the shared directory's volumes."""
        if store is None:
            return self.host.instances
        if store.path in self.host.unreachable_stores:
            raise HypervisorError(f"{store.path} is not mounted on {self.uri}")
        with FakeDriver._registry_lock:
            return FakeDriver._stores.setdefault(store.path, {})

    def _disk_volumes(self, spec: GuestSpec) -> dict[str, FakeVolume]:
        return self._volumes(spec.store)

    def _check_disk_locks(self, spec: GuestSpec) -> None:
        """libvirt's lock manager: a shared disk a running guest holds cannot be opened again."""
        if spec.store is None:
            return
        mine = {d.volume for d in spec.disks if d.device == "disk"}
        with FakeDriver._registry_lock:
            hosts = list(FakeDriver._hosts.items())
        for key, host in hosts:
            for other in host.guests.values():
                held = {d.volume for d in other.spec.disks} & mine
                same = other.spec.store is not None and other.spec.store.path == spec.store.path
                if same and held and other.state is GuestState.RUNNING and other is not self.host.guests.get(spec.name):
                    raise HypervisorError(
                        f"starting {spec.name}: Failed to acquire lock: Resource temporarily unavailable "
                        f"({', '.join(sorted(held))} is held by {other.spec.name} on fake://{key})"
                    )

    # --- host facts ----------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        self._check("host_info")
        used = sum(v.size for v in self.host.instances.values())
        return HostInfo(
            hostname=self.uri,
            cpus=self.host.cpus,
            memory_mib=self.host.memory_mib,
            cpu_model="fake",
            libvirt_version="0.0.0",
            hypervisor_version="0.0.0",
            disk_capacity_bytes=self.host.disk_bytes,
            disk_available_bytes=self.host.disk_bytes - used,
            kvm_offered=False,
        )

    def probe_accelerator(self, probe_kernel: Path | None) -> AcceleratorChoice:
        self._check("probe_accelerator")
        return AcceleratorChoice(Accelerator.TCG, "the fake driver emulates nothing; reporting TCG")

    # --- storage -------------------------------------------------------------------------
    def has_image_volume(self, volume: str) -> bool:
        self._check("has_image_volume")
        return volume in self.host.images

    def upload_image_volume(self, volume: str, source: Path) -> None:
        self._check("upload_image_volume")
        self.host.images[volume] = FakeVolume(source.stat().st_size)

    def delete_image_volume(self, volume: str) -> None:
        self._check("delete_image_volume")
        in_stores = [v for store in FakeDriver._stores.values() for v in store.items()]
        users = sorted(name for name, v in [*self.host.instances.items(), *in_stores] if v.backing == volume)
        if users:
            raise InvalidState(f"image volume {volume} still backs disks on {self.uri}: {', '.join(users)}")
        self.host.images.pop(volume, None)

    def create_overlay(
        self,
        volume: str,
        backing_volume: str,
        backing_format: str,
        size_bytes: int,
        *,
        store: SharedStorage | None = None,
    ) -> None:
        self._check("create_overlay")
        with self._lock:
            volumes = self._volumes(store)
            if backing_volume not in self.host.images:
                raise HypervisorError(f"image volume {backing_volume} is not on {self.uri}")
            if volume in volumes:
                raise HypervisorError(f"volume {volume} already exists on {self.uri}")
            volumes[volume] = FakeVolume(size_bytes, backing=backing_volume)

    def upload_instance_volume(self, volume: str, source: Path, *, store: SharedStorage | None = None) -> None:
        self._check("upload_instance_volume")
        data = source.read_bytes()
        self._volumes(store)[volume] = FakeVolume(len(data), data=data)

    def delete_instance_volume(self, volume: str, *, store: SharedStorage | None = None) -> None:
        self._check("delete_instance_volume")
        self._volumes(store).pop(volume, None)

    def check_storage(self, store: SharedStorage) -> None:
        self._check("check_storage")
        self._volumes(store)

    def list_instance_volumes(self) -> list[str]:
        self._check("list_instance_volumes")
        return sorted(self.host.instances)

    def resize_instance_volume(
        self, volume: str, size_bytes: int, *, guest: str | None, store: SharedStorage | None = None
    ) -> None:
        self._check("resize_instance_volume")
        with self._lock:
            vol = self._volumes(store).get(volume)
            if vol is None:
                raise HypervisorError(f"disk {volume} is not on {self.uri}")
            if size_bytes < vol.size:
                raise HypervisorError(f"cannot shrink disk {volume}")
            if guest is not None:
                running = self.host.guests.get(guest)
                if running is None or running.state is not GuestState.RUNNING:
                    raise HypervisorError(f"growing disk {volume} online: guest {guest} is not running")
            vol.size = size_bytes
            if guest is not None:
                self._log(guest, f"flexvm: state disk_bytes={size_bytes}")

    # --- guests --------------------------------------------------------------------------
    def define(self, spec: GuestSpec) -> None:
        self._check("define")
        with self._lock:
            if spec.name in self.host.guests:
                raise AlreadyExists(f"domain on host {self.uri}", spec.name)
            volumes = self._disk_volumes(spec)
            for disk in spec.disks:
                if disk.volume not in volumes:
                    raise HypervisorError(f"disk volume {disk.volume} of {spec.name} does not exist")
            self.host.guests[spec.name] = FakeGuest(spec)

    def start(self, name: str) -> None:
        self._check("start")
        with self._lock:
            guest = self._guest(name)
            self._settle(guest)
            if guest.state is GuestState.RUNNING:
                raise HypervisorError(f"starting {name}: domain is already running")
            self._check_isolation(guest.spec)
            self._check_disk_locks(guest.spec)
            running = sum(g.memory_mib for g in self.host.guests.values() if g.state is GuestState.RUNNING)
            if running + guest.plugged_mib > self.host.memory_mib:
                raise HypervisorError(f"starting {name}: cannot allocate {guest.plugged_mib} MiB")
            guest.state = GuestState.RUNNING
            guest.started_at = time.monotonic()
            guest.boots += 1
            guest.shutdown_requested_at = None

    def shutdown(self, name: str) -> None:
        self._check("shutdown")
        with self._lock:
            guest = self._guest(name)
            if guest.state is GuestState.RUNNING and not self.host.ignores_shutdown:
                guest.shutdown_requested_at = time.monotonic()

    def destroy(self, name: str) -> None:
        self._check("destroy")
        with self._lock:
            guest = self.host.guests.get(name)
            if guest is not None:
                guest.state = GuestState.SHUTOFF

    def undefine(self, name: str) -> None:
        self._check("undefine")
        with self._lock:
            guest = self.host.guests.get(name)
            if guest is not None and guest.state is GuestState.RUNNING:
                raise HypervisorError(f"undefining {name}: a running guest becomes transient, destroy it first")
            self.host.guests.pop(name, None)

    def guest_info(self, name: str) -> GuestInfo | None:
        self._check("guest_info")
        with self._lock:
            guest = self.host.guests.get(name)
            return None if guest is None else self._info(guest)

    def list_guests(self) -> list[GuestInfo]:
        self._check("list_guests")
        with self._lock:
            return [self._info(g) for g in self.host.guests.values()]

    def console_read(self, log_volume: str, offset: int = 0, *, store: SharedStorage | None = None) -> bytes:
        self._check("console_read")
        with self._lock:
            for guest in self.host.guests.values():
                if guest.spec.console_log == log_volume:
                    self._settle(guest)
            volume = self._volumes(store).get(log_volume)
            return b"" if volume is None else volume.data[offset:]

    # --- change while running ------------------------------------------------------------
    def set_vcpus(self, name: str, vcpus: int) -> None:
        self._check("set_vcpus")
        with self._lock:
            guest = self._running(name)
            ceiling = guest.spec.max_vcpus or guest.spec.vcpus
            if not 1 <= vcpus <= ceiling:
                raise HypervisorError(f"{name}: {vcpus} vCPUs is outside 1..{ceiling}")
            guest.vcpus = vcpus
            self._log(name, f"flexvm: state cpus={vcpus} mem_kib={guest.memory_mib * 1024}")

    def attach_memory(self, name: str, size_mib: int) -> None:
        self._check("attach_memory")
        with self._lock:
            guest = self._running(name)
            ceiling = guest.spec.max_memory_mib or guest.spec.memory_mib
            if size_mib <= 0 or size_mib % 128:
                raise HypervisorError(f"{name}: a DIMM must be a positive multiple of 128 MiB, not {size_mib} MiB")
            if guest.dimms >= guest.spec.memory_slots or guest.plugged_mib + size_mib > ceiling:
                raise HypervisorError(
                    f"{name}: no room for a {size_mib} MiB DIMM (ceiling {ceiling} MiB, "
                    f"{guest.spec.memory_slots - guest.dimms} slots free)"
                )
            guest.plugged_mib += size_mib
            guest.dimms += 1
            if guest.balloon_mib is not None:
                guest.balloon_mib += size_mib
            self._log(name, f"flexvm: state cpus={guest.vcpus} mem_kib={guest.memory_mib * 1024}")

    def set_memory_target(self, name: str, memory_mib: int) -> None:
        self._check("set_memory_target")
        with self._lock:
            guest = self._running(name)
            if not 0 < memory_mib <= guest.plugged_mib:
                raise HypervisorError(f"{name}: a balloon target of {memory_mib} MiB is outside 1..{guest.plugged_mib}")
            guest.balloon_mib = None if memory_mib == guest.plugged_mib else memory_mib

    def memory_stats(self, name: str) -> MemoryStats:
        self._check("memory_stats")
        with self._lock:
            guest = self._running(name)
            total = guest.memory_mib * 1024
            spare = max(total - guest.used_mib * 1024, 0)
            return MemoryStats(actual_kib=total, available_kib=total, unused_kib=spare, usable_kib=spare)

    # --- mobility ------------------------------------------------------------------------
    def migration_running(self, name: str) -> bool:
        self._check("migration_running")
        return False  # a fake migration runs inside its caller's migrate() call

    def migrate(
        self, name: str, request: MigrationRequest, progress: Callable[[MigrationProgress], None] | None = None
    ) -> MigrationResult:
        """Move a running guest to another fake host, as libvirt would: the destination must hold the
        image volumes and pre-created overlays; any failure leaves the guest running here."""
        self._check("migrate")
        dest = FakeDriver.for_uri(request.dest_uri)
        if dest.host is self.host:
            raise HypervisorError(f"migrating {name}: the destination is this host")
        with self._lock:
            guest = self._running(name)
            if not dest.host.reachable:
                raise HypervisorError(f"migrating {name}: cannot connect to {request.dest_uri}")
            dest._check("receive_migration")
            dest._check_isolation(guest.spec)
            needed = (
                [
                    v
                    for v in (guest.spec.kernel.kernel_volume, guest.spec.kernel.initrd_volume)
                    if guest.spec.kernel and v
                ]
                if guest.spec.kernel
                else []
            )
            missing = [v for v in needed if v not in dest.host.images]
            shared = guest.spec.store is not None and not request.copy_storage
            dest_volumes = dest._disk_volumes(guest.spec)
            missing += [d.volume for d in guest.spec.disks if d.volume not in dest_volumes]
            if missing:
                raise HypervisorError(f"migrating {name}: the destination lacks {', '.join(missing)}")
            if name in dest.host.guests:
                raise HypervisorError(f"migrating {name}: the destination already has a guest of that name")
            if guest.snapshots:
                raise HypervisorError(f"migrating {name}: cannot migrate a guest with {len(guest.snapshots)} snapshots")
            disk_bytes = 0
            for disk in [] if shared else guest.spec.disks:  # shared: both hosts see the same files
                source = self.host.instances[disk.volume]
                dest.host.instances[disk.volume].data = source.data
                dest.host.instances[disk.volume].size = source.size
                disk_bytes += source.size
            if progress is not None:
                progress(
                    MigrationProgress(
                        0.0,
                        guest.memory_mib * MIB,
                        guest.memory_mib * MIB,
                        0,
                        disk_bytes,
                        disk_bytes,
                        0,
                        "switching over",
                    )
                )
            del self.host.guests[name]
            dest.host.guests[name] = guest
        return MigrationResult(
            total_seconds=0.0,
            downtime_ms=1.0,
            memory_bytes=guest.memory_mib * MIB,
            disk_bytes=disk_bytes,
            converged_by="plain",
        )

    def download_instance_volume(self, volume: str, target: Path, *, store: SharedStorage | None = None) -> None:
        self._check("download_instance_volume")
        vol = self._volumes(store).get(volume)
        if vol is None:
            raise HypervisorError(f"volume {volume} is not on {self.uri}")
        target.write_bytes(vol.data)

    # --- measurements --------------------------------------------------------------------
    def read_counters(self) -> HostReading:
        """Counters that advance with (monotonic) time as the guests' simulated load says:
        ``FakeGuest.cpu_load`` of its vCPUs busy, ``disk_rate``/``net_rate`` bytes per second."""
        self._check("read_counters")
        now = time.monotonic()
        with self._lock:
            guests = []
            busy_ns = 0
            for guest in self.host.guests.values():
                self._settle(guest)
                if guest.state is not GuestState.RUNNING:
                    continue
                # Counters accumulate at the load of the moment, so a changed load changes the rate
                # from now on, never the past (a counter never jumps or goes back within a boot).
                if guest.counted_boot != guest.boots:
                    guest.counted_boot, guest.counted_at = guest.boots, guest.started_at
                    guest.cpu_ns = guest.disk_bytes = guest.net_bytes = 0.0
                elapsed = max(now - guest.counted_at, 0.0)
                guest.counted_at = now
                guest.cpu_ns += elapsed * 1e9 * guest.cpu_load * guest.vcpus
                guest.disk_bytes += elapsed * guest.disk_rate
                guest.net_bytes += elapsed * guest.net_rate
                cpu_ns = int(guest.cpu_ns)
                busy_ns += cpu_ns
                used = min(guest.used_mib, guest.memory_mib)
                guests.append(
                    GuestCounters(
                        name=guest.spec.name,
                        vm_id=guest.spec.vm_id,
                        at=time.time(),
                        running=True,
                        vcpus=guest.vcpus,
                        cpu_time_ns=cpu_ns,
                        vcpu_time_ns=cpu_ns,
                        vcpu_wait_ns=0,
                        memory_kib=guest.memory_mib * 1024,
                        memory_available_kib=guest.memory_mib * 1024,
                        memory_unused_kib=(guest.memory_mib - used) * 1024,
                        memory_usable_kib=(guest.memory_mib - used) * 1024,
                        disk_read_bytes=int(guest.disk_bytes),
                        disk_write_bytes=int(guest.disk_bytes),
                        disk_read_ops=int(guest.disk_bytes / 4096),
                        disk_write_ops=int(guest.disk_bytes / 4096),
                        net_rx_bytes=int(guest.net_bytes),
                        net_tx_bytes=int(guest.net_bytes),
                        net_rx_packets=int(guest.net_bytes / 1500),
                        net_tx_packets=int(guest.net_bytes / 1500),
                        boot_id=f"{self.uri}#{guest.boots}",
                    )
                )
            total_ns = int(now * 1e9) * self.host.cpus
            used_mib = sum(g.memory_mib for g in self.host.guests.values() if g.state is GuestState.RUNNING)
            host = HostCounters(
                at=time.time(),
                cpus=self.host.cpus,
                cpu_busy_ns=busy_ns,
                cpu_total_ns=total_ns,
                memory_total_kib=self.host.memory_mib * 1024,
                memory_free_kib=max(self.host.memory_mib - used_mib, 0) * 1024,
            )
        return HostReading(host, tuple(guests))

    # --- snapshots -----------------------------------------------------------------------
    def create_snapshot(self, name: str, snapshot: str) -> None:
        self._check("create_snapshot")
        with self._lock:
            guest = self._guest(name)
            if snapshot in guest.snapshots:
                raise HypervisorError(f"{name} already has a snapshot named {snapshot}")
            volumes = self._disk_volumes(guest.spec)
            data = {d.volume: volumes[d.volume].data for d in guest.spec.disks if d.device == "disk"}
            guest.snapshots[snapshot] = (guest.state, data)

    def list_snapshots(self, name: str) -> list[str]:
        self._check("list_snapshots")
        return list(self._guest(name).snapshots)

    def revert_snapshot(self, name: str, snapshot: str) -> None:
        self._check("revert_snapshot")
        with self._lock:
            guest = self._guest(name)
            if snapshot not in guest.snapshots:
                raise HypervisorError(f"{name} has no snapshot named {snapshot}")
            state, data = guest.snapshots[snapshot]
            volumes = self._disk_volumes(guest.spec)
            for volume, content in data.items():
                volumes[volume].data = content
            guest.state = state

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self._check("delete_snapshot")
        with self._lock:
            if self._guest(name).snapshots.pop(snapshot, None) is None:
                raise HypervisorError(f"{name} has no snapshot named {snapshot}")

    def apply_isolation(self, isolation: Isolation) -> None:
        self._check("apply_isolation")
        with self._lock:
            self.host.isolations[isolation.name] = isolation

    def isolate_nic(self, name: str, nic: GuestNic) -> bool:
        self._check("isolate_nic")
        with self._lock:
            guest = self._guest(name)
            nics = list(guest.spec.nics)
            index = next((i for i, n in enumerate(nics) if n.mac == nic.mac), None)
            if index is None:
                raise HypervisorError(f"{name} has no NIC {nic.mac}")
            if nics[index].isolation == nic.isolation:
                return False
            nics[index] = nic
            updated = dataclasses.replace(guest.spec, nics=tuple(nics))
            self._check_isolation(updated)
            guest.spec = updated
            return True

    def remove_isolation(self, name: str) -> None:
        self._check("remove_isolation")
        with self._lock:
            if any(nic.isolation == name for guest in self.host.guests.values() for nic in guest.spec.nics):
                raise HypervisorError(f"network filter {name} is in use")
            self.host.isolations.pop(name, None)

    def _check_isolation(self, spec: GuestSpec) -> None:
        """As libvirtd does, refuse to run a guest whose NIC names a filter this host lacks."""
        for nic in spec.nics:
            if nic.isolation is not None and nic.isolation not in self.host.isolations:
                raise HypervisorError(f"referenced filter '{nic.isolation}' is missing on {self.uri}")

    # --- simulation ----------------------------------------------------------------------
    def _running(self, name: str) -> FakeGuest:
        guest = self._guest(name)
        self._settle(guest)
        if guest.state is not GuestState.RUNNING:
            raise HypervisorError(f"{name} is not running")
        return guest

    def _guest(self, name: str) -> FakeGuest:
        guest = self.host.guests.get(name)
        if guest is None:
            raise HypervisorError(f"host {self.uri} has no guest named {name}")
        return guest

    def _log(self, name: str, line: str) -> None:
        guest = self.host.guests.get(name)
        if guest is None or not guest.spec.console_log:
            return
        volume = self._disk_volumes(guest.spec).setdefault(guest.spec.console_log, FakeVolume(0))
        volume.data += (line + "\n").encode()
        volume.size = len(volume.data)

    def _settle(self, guest: FakeGuest) -> None:
        """Advance a guest's simulated life: finish a requested shutdown, print readiness."""
        now = time.monotonic()
        if guest.state is not GuestState.RUNNING:
            return
        if guest.shutdown_requested_at is not None and now - guest.shutdown_requested_at >= self.host.shutdown_delay:
            self._log(guest.spec.name, "flexvm: poweroff")
            guest.state = GuestState.SHUTOFF
            guest.shutdown_requested_at = None
            return
        delay = self.host.ready_delay
        if delay is not None and now - guest.started_at >= delay and guest.ready_boot < guest.boots:
            guest.ready_boot = guest.boots
            volumes = self._disk_volumes(guest.spec)
            disk = next(
                (volumes[d.volume].size for d in guest.spec.disks if d.device == "disk" and d.volume in volumes),
                0,
            )
            self._log(
                guest.spec.name,
                f"flexvm: ready name={guest.spec.name} cpus={guest.spec.vcpus} mem_kib={guest.spec.memory_mib * 1024} "
                f"disk_bytes={disk} ip=none boots={guest.boots} uptime={now - guest.started_at:.2f}",
            )

    def _info(self, guest: FakeGuest) -> GuestInfo:
        self._settle(guest)
        return GuestInfo(
            name=guest.spec.name,
            uuid=guest.spec.uuid,
            state=guest.state,
            vcpus=guest.vcpus,
            memory_kib=guest.memory_mib * 1024,
            cpu_time_ns=0,
            vm_id=guest.spec.vm_id,
            disks=[d.volume for d in guest.spec.disks],
            max_vcpus=guest.spec.max_vcpus or guest.spec.vcpus,
            max_memory_kib=(guest.spec.max_memory_mib or guest.spec.memory_mib) * 1024,
            plugged_memory_kib=guest.plugged_mib * 1024,
        )
