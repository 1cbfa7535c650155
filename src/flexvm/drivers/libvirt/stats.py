"""Reading counters from libvirt: one ``getAllDomainStats`` call for every guest, plus the node's.

``read_counters(conn)`` is what ``LibvirtDriver.read_counters`` runs (inside the connection's error
translation). Per reading it makes four calls to libvirtd whatever the number of guests —
``getAllDomainStats``, ``getCPUStats``, ``getMemoryStats``, ``getInfo`` — plus one
``metadata`` call the first time it meets a domain (its flexvm VM id is cached by UUID).
What it costs (2-core TCG box): about 1 ms of CPU in this process plus 0.1 ms per guest; libvirtd
spends about 2 ms of CPU per guest (asking each QEMU for its balloon and block figures), and the
call takes about 7 ms of wall time per guest.

``guest_counters`` maps one domain's statistics dict to ``GuestCounters``; it is pure, so it is
unit-tested on recorded dicts without libvirt.

What libvirt 9.0 with QEMU 7.2 reports (checked on this kind of machine, where qemu:///system puts
each guest in a cgroup of the unified (v2) hierarchy, and on lab hosts, whose libvirtd runs QEMU
outside any cgroup of its own):
- ``cpu.time`` (with ``cpu.user``/``cpu.system``) comes from the guest's cgroup ``cpu.stat``
  (microseconds) where it has one, and from ``/proc/<pid>/stat`` where it has none (lab hosts):
  there, like ``vcpu.N.time`` everywhere, it moves in steps of 10 ms (the kernel's clock ticks),
  so a rate over a few seconds is good to a percent or so.
- ``vcpu.N.delay`` is the time the vCPU thread sat runnable in the host's run queue
  (``/proc/<pid>/task/<tid>/schedstat``; the guest sees it as steal time): that is
  ``vcpu_wait_ns``. ``vcpu.N.wait`` is reported too, but is always 0 on a kernel without
  scheduler statistics (``CONFIG_SCHEDSTATS``; no ``kernel.sched_schedstats`` sysctl), which is
  why it is only the fallback where a libvirt reports no ``delay``.
- A NIC of type ``user`` (QEMU's user-mode network) has no host-side device, so libvirt reports
  ``net.count`` but no ``net.N.*`` counters for it: a guest with only such NICs reads ``None``
  for every network figure, never 0.
- ``balloon.available``/``unused``/``usable`` appear only once the guest's ``virtio_balloon``
  driver reports (flexvm's domain XML asks for it every 5 s); before that they read ``None``.

Disks: every top-level disk is summed, the read-only cloud-init seed (a cdrom) included: its reads
are real I/O on the host's storage, and they happen once, at first boot. Backing images are not
counted apart (no ``BACKING`` flag): reads served from a backing file count against the disk.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from flexvm.drivers.libvirt.connection import error_code, require_libvirt
from flexvm.drivers.libvirt.domain_xml import METADATA_NS
from flexvm.model.metrics import GuestCounters, HostCounters, HostReading

_RUNNING = 1  # VIR_DOMAIN_RUNNING
_VM_ID_CACHE_SIZE = 10_000  # UUIDs remembered; far more than one control plane's guests
_vm_ids: OrderedDict[str, str | None] = OrderedDict()
_vm_ids_lock = threading.Lock()


# --------------------------------------------------------------------------- the pure mapping


def _indexed_sum(stats: Mapping[str, Any], group: str, suffix: str) -> int | None:
    """The sum of ``<group>.<N>.<suffix>`` over every N that reports it; None when none does."""
    head, tail = f"{group}.", f".{suffix}"
    values = [
        int(value)
        for key, value in stats.items()
        if key.startswith(head) and key.endswith(tail) and key[len(head) : -len(tail)].isdigit()
    ]
    return sum(values) if values else None


def _int(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    return None if value is None else int(value)


def guest_counters(
    name: str, stats: Mapping[str, Any], *, vm_id: str | None, boot_id: str | None, at: float
) -> GuestCounters:
    """One domain's ``getAllDomainStats`` dict as ``GuestCounters``; None where libvirt is silent."""
    vcpu_wait = _indexed_sum(stats, "vcpu", "delay")
    if vcpu_wait is None:
        vcpu_wait = _indexed_sum(stats, "vcpu", "wait")
    return GuestCounters(
        name=name,
        vm_id=vm_id,
        at=at,
        running=stats.get("state.state") == _RUNNING,
        vcpus=int(stats.get("vcpu.current", 0)),
        cpu_time_ns=_int(stats, "cpu.time"),
        vcpu_time_ns=_indexed_sum(stats, "vcpu", "time"),
        vcpu_wait_ns=vcpu_wait,
        memory_kib=_int(stats, "balloon.current"),
        memory_available_kib=_int(stats, "balloon.available"),
        memory_unused_kib=_int(stats, "balloon.unused"),
        memory_usable_kib=_int(stats, "balloon.usable"),
        disk_read_bytes=_indexed_sum(stats, "block", "rd.bytes"),
        disk_write_bytes=_indexed_sum(stats, "block", "wr.bytes"),
        disk_read_ops=_indexed_sum(stats, "block", "rd.reqs"),
        disk_write_ops=_indexed_sum(stats, "block", "wr.reqs"),
        net_rx_bytes=_indexed_sum(stats, "net", "rx.bytes"),
        net_tx_bytes=_indexed_sum(stats, "net", "tx.bytes"),
        net_rx_packets=_indexed_sum(stats, "net", "rx.pkts"),
        net_tx_packets=_indexed_sum(stats, "net", "tx.pkts"),
        boot_id=boot_id,
    )


def boot_id(uri: str, domain_id: int) -> str:
    """Changes whenever the guest's QEMU process starts again: libvirt gives a domain a new ID at
    every start (IDs count up per libvirtd), and a guest that moves gets its new host's."""
    return f"{uri}#{domain_id}"


def host_counters(cpu: Mapping[str, int], memory: Mapping[str, int], cpus: int, *, at: float) -> HostCounters:
    """The node's ``getCPUStats`` (ns, all CPUs) and ``getMemoryStats`` (KiB, all cells)."""
    busy = sum(int(v) for k, v in cpu.items() if k not in ("idle", "iowait")) if cpu else None
    total = sum(int(v) for v in cpu.values()) if cpu else None
    free_parts = [memory.get(k) for k in ("free", "buffers", "cached")]
    free = sum(int(v) for v in free_parts if v is not None) if memory.get("free") is not None else None
    return HostCounters(
        at=at,
        cpus=cpus,
        cpu_busy_ns=busy,
        cpu_total_ns=total,
        memory_total_kib=_int(memory, "total"),
        memory_free_kib=free,
    )


def vm_id_from_metadata(xml: str) -> str | None:
    """The id in flexvm's metadata element (``<vm id='...'/>``, as ``dom.metadata`` returns it)."""
    return ET.fromstring(xml).get("id")


# --------------------------------------------------------------------------- reading libvirt


def _stats_groups(lv: Any) -> int:
    return (
        lv.VIR_DOMAIN_STATS_STATE
        | lv.VIR_DOMAIN_STATS_CPU_TOTAL
        | lv.VIR_DOMAIN_STATS_BALLOON
        | lv.VIR_DOMAIN_STATS_VCPU
        | lv.VIR_DOMAIN_STATS_INTERFACE
        | lv.VIR_DOMAIN_STATS_BLOCK
    )


class _Vanished(Exception):
    """The domain went away between the statistics and a follow-up call."""


def _vm_id(dom: Any, uuid: str) -> str | None:
    """The domain's flexvm VM id, read once per UUID (it is fixed when the domain is defined)."""
    with _vm_ids_lock:
        if uuid in _vm_ids:
            _vm_ids.move_to_end(uuid)
            return _vm_ids[uuid]
    lv = require_libvirt()
    try:
        vm_id = vm_id_from_metadata(dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0))
    except lv.libvirtError as err:
        code = error_code(err)
        if code == lv.VIR_ERR_NO_DOMAIN:
            raise _Vanished from err
        if code != lv.VIR_ERR_NO_DOMAIN_METADATA:
            raise
        vm_id = None  # a domain flexvm did not make
    with _vm_ids_lock:
        _vm_ids[uuid] = vm_id
        while len(_vm_ids) > _VM_ID_CACHE_SIZE:
            _vm_ids.popitem(last=False)
    return vm_id


def _guests(conn: Any, records: Iterable[tuple[Any, Mapping[str, Any]]], at: float) -> list[GuestCounters]:
    uri = conn.getURI()  # local: the URI the connection was opened with
    guests = []
    for dom, stats in records:
        try:
            vm_id = _vm_id(dom, dom.UUIDString())
        except _Vanished:
            continue  # stopped (and, if transient, gone) since the statistics were taken
        # name(), UUIDString() and ID() are read from the handle getAllDomainStats returned: no calls.
        guests.append(guest_counters(dom.name(), stats, vm_id=vm_id, boot_id=boot_id(uri, dom.ID()), at=at))
    return guests


def read_counters(conn: Any) -> HostReading:
    """Every active guest's counters (paused ones marked not running) and the host's.

    NOWAIT: a guest whose QEMU is busy with a job (a snapshot, a block resize) has the figures
    that need its monitor left out of this reading (they read None), rather than stalling the
    reading of every guest on the host behind it.
    """
    lv = require_libvirt()
    flags = lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    records = conn.getAllDomainStats(_stats_groups(lv), flags)
    guests_at = time.time()
    guests = _guests(conn, records, guests_at)
    cpu = conn.getCPUStats(lv.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
    memory = conn.getMemoryStats(lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    host_at = time.time()
    cpus = conn.getInfo()[2]
    return HostReading(host_counters(cpu, memory, cpus, at=host_at), tuple(guests))
