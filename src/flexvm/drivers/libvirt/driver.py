"""LibvirtDriver: real QEMU guests through libvirt."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexvm.drivers.base import Driver
from flexvm.drivers.libvirt import accel, hotplug, migration, stats
from flexvm.drivers.libvirt.connection import Connection, is_missing, require_libvirt
from flexvm.drivers.libvirt.domain_xml import (
    build_domain_xml,
    disk_sources,
    instance_dir,
    interface_xml,
    nic_filter,
    vm_id_from_xml,
)
from flexvm.drivers.libvirt.nwfilter_xml import GUEST_FILTER, guest_filter_xml, project_filter_xml
from flexvm.drivers.libvirt.storage import IMAGE_POOL, INSTANCE_POOL, Storage
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
from flexvm.model.metrics import HostReading
from flexvm.model.network import Isolation
from flexvm.model.storage import SharedStorage

_STATES = {
    0: GuestState.OTHER,
    1: GuestState.RUNNING,
    2: GuestState.RUNNING,
    3: GuestState.PAUSED,
    4: GuestState.SHUTDOWN,
    5: GuestState.SHUTOFF,
    6: GuestState.CRASHED,
    7: GuestState.PAUSED,
}


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class LibvirtDriver(Driver):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.connection = Connection(uri)
        self.storage = Storage(self.connection)

    # --- host facts ----------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        def read(conn: Any) -> HostInfo:
            lv = require_libvirt()
            model, _numa_memory_mib, cpus, *_ = conn.getInfo()
            # getInfo() sums NUMA nodes' memory, which misses memory hot-added to the host after
            # boot; the node's own statistics report the whole of it.
            memory_mib = conn.getMemoryStats(lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)["total"] // 1024
            capacity, available = self.storage.pool_space()
            return HostInfo(
                hostname=conn.getHostname(),
                cpus=cpus,
                memory_mib=memory_mib,
                cpu_model=model,
                libvirt_version=_version(conn.getLibVersion()),
                hypervisor_version=_version(conn.getVersion()),
                disk_capacity_bytes=capacity,
                disk_available_bytes=available,
                kvm_offered=accel.kvm_offered(conn.getCapabilities()),
            )

        return self.connection.call("reading host facts", read)

    def probe_accelerator(self, probe_kernel: Path | None) -> AcceleratorChoice:
        conn = self.connection.get()
        if not accel.kvm_offered(self.connection.call("reading capabilities", lambda c: c.getCapabilities())):
            return AcceleratorChoice(
                Accelerator.TCG, "libvirt offers no kvm domain type here (no usable /dev/kvm); using TCG"
            )
        if probe_kernel is None:
            return AcceleratorChoice(
                Accelerator.TCG, "KVM is offered but there is no kernel to prove it with; using TCG"
            )
        digest = hashlib.sha256(probe_kernel.read_bytes()).hexdigest()[:12]
        kernel_volume = f"flexvm-probe-{digest}.kernel"
        if not self.has_image_volume(kernel_volume):
            self.upload_image_volume(kernel_volume, probe_kernel)
        self._remove_probe_leftovers()
        xml = build_domain_xml(accel.probe_spec(kernel_volume), self.storage.paths)
        lv = require_libvirt()
        try:
            conn.createXML(xml, 0)
        except lv.libvirtError as err:
            self._remove_probe_leftovers()
            return AcceleratorChoice(
                Accelerator.TCG, f"a test guest under KVM failed to start ({err.get_error_message()}); using TCG"
            )
        try:
            return accel.judge_probe(
                lambda: self.console_read(accel.PROBE_LOG),
                lambda: self.guest_info(accel.PROBE_NAME) is not None,
            )
        finally:
            self._remove_probe_leftovers()

    def _remove_probe_leftovers(self) -> None:
        self.destroy(accel.PROBE_NAME)
        self.delete_instance_volume(accel.PROBE_LOG)

    # --- storage -------------------------------------------------------------------------
    def has_image_volume(self, volume: str) -> bool:
        return self.storage.lookup(IMAGE_POOL, volume, refresh=True) is not None

    def upload_image_volume(self, volume: str, source: Path) -> None:
        self.storage.upload(IMAGE_POOL, volume, source)

    def delete_image_volume(self, volume: str) -> None:
        users = self.storage.overlays_on(volume)
        if users:
            raise InvalidState(f"image volume {volume} still backs disks on {self.uri}: {', '.join(users)}")
        self.storage.delete(IMAGE_POOL, volume)

    def create_overlay(
        self,
        volume: str,
        backing_volume: str,
        backing_format: str,
        size_bytes: int,
        *,
        store: SharedStorage | None = None,
    ) -> None:
        pool = self.storage.instance_pool(store)
        try:
            self.storage.create_overlay(volume, backing_volume, backing_format, size_bytes, pool)
        except FileNotFoundError as err:
            raise HypervisorError(str(err)) from err

    def upload_instance_volume(self, volume: str, source: Path, *, store: SharedStorage | None = None) -> None:
        self.storage.upload(self.storage.instance_pool(store), volume, source)

    def delete_instance_volume(self, volume: str, *, store: SharedStorage | None = None) -> None:
        self.storage.delete(self.storage.instance_pool(store), volume)

    def check_storage(self, store: SharedStorage) -> None:
        self.storage.check_writable(self.storage.instance_pool(store))

    def list_instance_volumes(self) -> list[str]:
        return self.storage.names(INSTANCE_POOL)

    def resize_instance_volume(
        self, volume: str, size_bytes: int, *, guest: str | None, store: SharedStorage | None = None
    ) -> None:
        if guest is None:
            try:
                self.storage.resize(volume, size_bytes, self.storage.instance_pool(store))
            except FileNotFoundError as err:
                raise HypervisorError(str(err)) from err
            return
        lv = require_libvirt()
        path = str(instance_dir(store, self.storage.paths) / volume)
        dom = self._domain(guest)
        with self.connection.translate(f"growing disk {volume} of {guest} online"):
            # blockResize would shrink as readily as grow, cutting off the guest's data.
            current = dom.blockInfo(path)[0]
            if size_bytes < current:
                raise HypervisorError(
                    f"refusing to shrink disk {volume} of {guest} from {current} to {size_bytes} bytes"
                )
            dom.blockResize(path, size_bytes, lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    # --- guests --------------------------------------------------------------------------
    def define(self, spec: GuestSpec) -> None:
        if self._find(spec.name) is not None:
            raise AlreadyExists(f"domain on host {self.uri}", spec.name)
        xml = build_domain_xml(spec, self.storage.paths)
        self.connection.call(f"defining {spec.name}", lambda conn: conn.defineXML(xml))

    def start(self, name: str) -> None:
        dom = self._domain(name)
        with self.connection.translate(f"starting {name}"):
            dom.create()

    def shutdown(self, name: str) -> None:
        lv = require_libvirt()
        dom = self._domain(name)
        with self.connection.translate(f"shutting down {name}"):
            if dom.isActive():
                dom.shutdownFlags(lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy(self, name: str) -> None:
        dom = self._find(name)
        if dom is None:
            return
        lv = require_libvirt()
        with self.connection.translate(f"powering off {name}"):
            try:
                if dom.isActive():
                    dom.destroy()
            except lv.libvirtError as err:
                # It may have stopped (or vanished, if transient) between the check and the call.
                if is_missing(err) or error_is_not_running(err):
                    return
                raise

    def undefine(self, name: str) -> None:
        dom = self._find(name)
        if dom is None:
            return
        lv = require_libvirt()
        with self.connection.translate(f"undefining {name}"):
            if dom.isActive():
                # libvirt would make it transient, and it would vanish for good at its next stop.
                raise HypervisorError(f"undefining {name}: it is running; power it off first")
            try:
                dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except lv.libvirtError as err:
                if not is_missing(err):
                    raise

    def guest_info(self, name: str) -> GuestInfo | None:
        dom = self._find(name)
        if dom is None:
            return None
        lv = require_libvirt()
        try:
            with self.connection.translate(f"reading {name}"):
                return self._info(dom)
        except HypervisorError as err:
            if isinstance(err.__cause__, lv.libvirtError) and is_missing(err.__cause__):
                return None
            raise

    def list_guests(self) -> list[GuestInfo]:
        def read(conn: Any) -> list[GuestInfo]:
            lv = require_libvirt()
            guests = []
            for dom in conn.listAllDomains(0):
                try:
                    guests.append(self._info(dom))
                except lv.libvirtError as err:
                    if not is_missing(err):  # a transient guest that just went away
                        raise
            return guests

        return self.connection.call("listing guests", read)

    def console_read(self, log_volume: str, offset: int = 0, *, store: SharedStorage | None = None) -> bytes:
        return self.storage.download(self.storage.instance_pool(store), log_volume, offset)

    # --- change while running (hotplug.py does the work) --------------------------------
    def set_vcpus(self, name: str, vcpus: int) -> None:
        dom = self._domain(name)
        with self.connection.translate(f"setting {name} to {vcpus} vCPUs"):
            hotplug.set_vcpus(dom, vcpus)

    def attach_memory(self, name: str, size_mib: int) -> None:
        dom = self._domain(name)
        with self.connection.translate(f"hot-plugging {size_mib} MiB into {name}"):
            hotplug.attach_dimm(dom, size_mib)

    def set_memory_target(self, name: str, memory_mib: int) -> None:
        dom = self._domain(name)
        with self.connection.translate(f"setting {name}'s balloon to {memory_mib} MiB"):
            hotplug.set_balloon(dom, memory_mib)

    def memory_stats(self, name: str) -> MemoryStats:
        dom = self._domain(name)
        with self.connection.translate(f"reading {name}'s memory statistics"):
            return hotplug.memory_stats(dom)

    # --- mobility (migration.py does the work) -------------------------------------------
    def migrate(
        self, name: str, request: MigrationRequest, progress: Callable[[MigrationProgress], None] | None = None
    ) -> MigrationResult:
        dom = self._domain(name)
        return migration.migrate(self.connection, dom, request, progress)

    def migration_running(self, name: str) -> bool:
        dom = self._find(name)
        if dom is None:
            return False
        lv = require_libvirt()
        with self.connection.translate(f"reading {name}'s job"):
            return bool(dom.jobInfo()[0] != lv.VIR_DOMAIN_JOB_NONE)

    def download_instance_volume(self, volume: str, target: Path, *, store: SharedStorage | None = None) -> None:
        try:
            self.storage.download_to_file(self.storage.instance_pool(store), volume, target)
        except FileNotFoundError as err:
            raise HypervisorError(str(err)) from err

    # --- measurements (stats.py does the work) ------------------------------------------
    def read_counters(self) -> HostReading:
        return self.connection.call("reading counters", stats.read_counters)

    # --- snapshots -----------------------------------------------------------------------
    def create_snapshot(self, name: str, snapshot: str) -> None:
        dom = self._domain(name)
        xml = ET.Element("domainsnapshot")
        ET.SubElement(xml, "name").text = snapshot
        with self.connection.translate(f"snapshotting {name} as {snapshot}"):
            dom.snapshotCreateXML(ET.tostring(xml, encoding="unicode"), 0)

    def list_snapshots(self, name: str) -> list[str]:
        dom = self._domain(name)
        with self.connection.translate(f"listing the snapshots of {name}"):
            snapshots = dom.listAllSnapshots(0)
            return [
                s.getName()
                for s in sorted(
                    snapshots, key=lambda s: int(ET.fromstring(s.getXMLDesc(0)).findtext("creationTime") or 0)
                )
            ]

    def revert_snapshot(self, name: str, snapshot: str) -> None:
        dom = self._domain(name)
        with self.connection.translate(f"reverting {name} to {snapshot}"):
            dom.revertToSnapshot(dom.snapshotLookupByName(snapshot, 0), 0)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        dom = self._domain(name)
        with self.connection.translate(f"deleting snapshot {snapshot} of {name}"):
            dom.snapshotLookupByName(snapshot, 0).delete(0)

    def apply_isolation(self, isolation: Isolation) -> None:
        # The guest filter first: the project's includes it, and libvirt refuses a dangling reference.
        with self.connection.translate(f"defining network filter {GUEST_FILTER}"):
            self.connection.get().nwfilterDefineXML(guest_filter_xml(self._filter_uuid(GUEST_FILTER)))
        with self.connection.translate(f"defining network filter {isolation.name}"):
            self.connection.get().nwfilterDefineXML(project_filter_xml(isolation, self._filter_uuid(isolation.name)))

    def isolate_nic(self, name: str, nic: GuestNic) -> bool:
        lv = require_libvirt()
        dom = self._domain(name)
        with self.connection.translate(f"putting {nic.isolation} on {name}'s NIC {nic.mac}"):
            if nic_filter(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE), nic.mac) == nic.isolation:
                return False
            flags = lv.VIR_DOMAIN_AFFECT_CONFIG | (lv.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
            dom.updateDeviceFlags(interface_xml(nic), flags)
        return True

    def _filter_uuid(self, name: str) -> str | None:
        """The UUID this host knows the filter by, or None for a filter it does not have."""
        lv = require_libvirt()
        conn = self.connection.get()
        with self.connection.translate(f"looking up network filter {name}", conn):
            try:
                return str(conn.nwfilterLookupByName(name).UUIDString())
            except lv.libvirtError as err:
                if err.get_error_code() == lv.VIR_ERR_NO_NWFILTER:
                    return None
                raise

    def remove_isolation(self, name: str) -> None:
        lv = require_libvirt()
        conn = self.connection.get()
        with self.connection.translate(f"removing network filter {name}", conn):
            try:
                conn.nwfilterLookupByName(name).undefine()
            except lv.libvirtError as err:
                if err.get_error_code() != lv.VIR_ERR_NO_NWFILTER:
                    raise

    def close(self) -> None:
        self.connection.close()

    # --- helpers -------------------------------------------------------------------------
    def _find(self, name: str) -> Any | None:
        lv = require_libvirt()
        conn = self.connection.get()
        with self.connection.translate(f"looking up {name}", conn):
            try:
                return conn.lookupByName(name)
            except lv.libvirtError as err:
                if is_missing(err):
                    return None
                raise

    def _domain(self, name: str) -> Any:
        dom = self._find(name)
        if dom is None:
            raise HypervisorError(f"host {self.uri} has no guest named {name}")
        return dom

    @staticmethod
    def _info(dom: Any) -> GuestInfo:
        # info()'s second figure is the <memory> element: boot memory plus hot-plugged DIMMs.
        state, plugged_kib, memory_kib, vcpus, cpu_time = dom.info()
        xml = dom.XMLDesc(0)
        ceilings = domain_ceilings(xml)
        return GuestInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=_STATES.get(state, GuestState.OTHER),
            vcpus=vcpus,
            memory_kib=memory_kib,
            cpu_time_ns=cpu_time,
            vm_id=vm_id_from_xml(xml),
            persistent=bool(dom.isPersistent()),
            disks=disk_sources(xml),
            max_vcpus=ceilings[0] or vcpus,
            max_memory_kib=ceilings[1] or plugged_kib,
            plugged_memory_kib=plugged_kib,
        )


def domain_ceilings(xml: str) -> tuple[int, int]:
    """(max vCPUs, max memory KiB) from a domain's XML: <vcpu> is the maximum (current= is what runs),
    <maxMemory> the hot-plug ceiling; 0 where the domain has none."""
    root = ET.fromstring(xml)
    vcpu = root.findtext("vcpu")
    max_memory = root.find("maxMemory")
    kib = 0
    if max_memory is not None and max_memory.text:
        kib = int(max_memory.text) * {"KiB": 1, "MiB": 1024, "GiB": 1024 * 1024}.get(max_memory.get("unit", "KiB"), 1)
    return (int(vcpu) if vcpu else 0), kib


def error_is_not_running(err: Exception) -> bool:
    lv = require_libvirt()
    get = getattr(err, "get_error_code", None)
    return bool(get and get() == lv.VIR_ERR_OPERATION_INVALID)
