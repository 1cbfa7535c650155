"""stats.py: libvirt's getAllDomainStats dicts (recorded with libvirt 9.0 / QEMU 7.2) as GuestCounters,
the node's figures as HostCounters, and read_counters over a stand-in connection."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from flexvm.drivers.libvirt import stats
from flexvm.drivers.libvirt.stats import boot_id, guest_counters, host_counters, vm_id_from_metadata

# A tiny guest on qemu:///system: 1 vCPU, 512 MiB, one disk, a user-mode NIC (which libvirt
# counts, net.count=1, but cannot read: no net.0.* figures). vcpu.0.wait is 0 on a kernel without
# scheduler statistics; vcpu.0.delay is the run-queue delay.
SYSTEM_GUEST = {
    "balloon.available": 481284,
    "balloon.current": 524288,
    "balloon.disk_caches": 2068,
    "balloon.last-update": 1795824463,
    "balloon.major_fault": 19,
    "balloon.maximum": 524288,
    "balloon.minor_fault": 441276,
    "balloon.rss": 251648,
    "balloon.swap_in": 0,
    "balloon.swap_out": 0,
    "balloon.unused": 451296,
    "balloon.usable": 452272,
    "block.0.allocation": 4849664,
    "block.0.backingIndex": 1,
    "block.0.capacity": 4294967296,
    "block.0.fl.reqs": 8,
    "block.0.fl.times": 7912802,
    "block.0.name": "vda",
    "block.0.path": "/var/lib/libvirt/flexvm/instances/first-vm-os.qcow2",
    "block.0.physical": 4796416,
    "block.0.rd.bytes": 2046464,
    "block.0.rd.reqs": 57,
    "block.0.rd.times": 9337379,
    "block.0.wr.bytes": 4163584,
    "block.0.wr.reqs": 31,
    "block.0.wr.times": 13806327,
    "block.count": 1,
    "cpu.cache.monitor.count": 0,
    "cpu.haltpoll.fail.time": 0,
    "cpu.haltpoll.success.time": 0,
    "cpu.system": 8004370000,
    "cpu.time": 100081080000,
    "cpu.user": 92076710000,
    "net.count": 1,
    "state.reason": 1,
    "state.state": 1,
    "vcpu.0.delay": 17629842884,
    "vcpu.0.state": 1,
    "vcpu.0.time": 89090000000,
    "vcpu.0.wait": 0,
    "vcpu.current": 1,
    "vcpu.maximum": 1,
}

# A bigger guest as a lab host reports it: 2 of 4 vCPUs plugged, an OS disk and the read-only seed,
# two bridged NICs (tap devices, so libvirt reads them), no balloon statistics yet.
LAB_GUEST = {
    "state.state": 1,
    "state.reason": 1,
    "cpu.time": 30_000_000_000,
    "cpu.user": 25_000_000_000,
    "cpu.system": 5_000_000_000,
    "balloon.current": 1048576,
    "balloon.maximum": 1048576,
    "vcpu.current": 2,
    "vcpu.maximum": 4,
    "vcpu.0.state": 1,
    "vcpu.0.time": 12_000_000_000,
    "vcpu.0.wait": 0,
    "vcpu.0.delay": 1_000_000_000,
    "vcpu.1.state": 1,
    "vcpu.1.time": 11_000_000_000,
    "vcpu.1.wait": 0,
    "vcpu.1.delay": 500_000_000,
    "net.count": 2,
    "net.0.name": "vnet0",
    "net.0.rx.bytes": 1000,
    "net.0.rx.pkts": 10,
    "net.0.rx.errs": 0,
    "net.0.rx.drop": 0,
    "net.0.tx.bytes": 2000,
    "net.0.tx.pkts": 20,
    "net.0.tx.errs": 0,
    "net.0.tx.drop": 0,
    "net.1.name": "vnet1",
    "net.1.rx.bytes": 3000,
    "net.1.rx.pkts": 30,
    "net.1.tx.bytes": 4000,
    "net.1.tx.pkts": 40,
    "block.count": 2,
    "block.0.name": "vda",
    "block.0.rd.bytes": 5_000_000,
    "block.0.rd.reqs": 500,
    "block.0.wr.bytes": 6_000_000,
    "block.0.wr.reqs": 600,
    "block.1.name": "sda",
    "block.1.rd.bytes": 70_000,
    "block.1.rd.reqs": 7,
    "block.1.wr.bytes": 0,
    "block.1.wr.reqs": 0,
}


def read(stats_dict: dict[str, Any], **kwargs: Any) -> Any:
    options: dict[str, Any] = {"vm_id": "vm-1", "boot_id": "qemu:///system#7", "at": 1000.0} | kwargs
    return guest_counters("g1", stats_dict, **options)


def test_a_recorded_guest_maps_to_its_counters() -> None:
    c = read(SYSTEM_GUEST)
    assert (c.name, c.vm_id, c.boot_id, c.at) == ("g1", "vm-1", "qemu:///system#7", 1000.0)
    assert c.running is True
    assert c.vcpus == 1
    assert c.cpu_time_ns == 100081080000
    assert c.vcpu_time_ns == 89090000000
    assert c.vcpu_wait_ns == 17629842884, "the run-queue delay, not the (schedstats-less) wait of 0"
    assert (c.memory_kib, c.memory_available_kib, c.memory_unused_kib, c.memory_usable_kib) == (
        524288,
        481284,
        451296,
        452272,
    )
    assert (c.disk_read_bytes, c.disk_write_bytes, c.disk_read_ops, c.disk_write_ops) == (2046464, 4163584, 57, 31)


def test_a_user_mode_nic_gives_no_network_figures_rather_than_zeros() -> None:
    c = read(SYSTEM_GUEST)
    assert (c.net_rx_bytes, c.net_tx_bytes, c.net_rx_packets, c.net_tx_packets) == (None, None, None, None)


def test_vcpus_disks_and_nics_are_summed() -> None:
    c = read(LAB_GUEST)
    assert c.vcpus == 2
    assert c.vcpu_time_ns == 23_000_000_000
    assert c.vcpu_wait_ns == 1_500_000_000
    assert c.disk_read_bytes == 5_070_000, "the read-only seed's reads count too"
    assert (c.disk_write_bytes, c.disk_read_ops, c.disk_write_ops) == (6_000_000, 507, 600)
    assert (c.net_rx_bytes, c.net_tx_bytes, c.net_rx_packets, c.net_tx_packets) == (4000, 6000, 40, 60)


def test_balloon_figures_the_guest_has_not_reported_yet_are_none() -> None:
    c = read(LAB_GUEST)
    assert c.memory_kib == 1048576
    assert (c.memory_available_kib, c.memory_unused_kib, c.memory_usable_kib) == (None, None, None)


def test_without_delay_the_wait_is_used() -> None:
    older = {k: v for k, v in LAB_GUEST.items() if not k.endswith(".delay")}
    older["vcpu.0.wait"] = 300
    assert read(older).vcpu_wait_ns == 300


def test_counts_and_names_are_not_summed_as_figures() -> None:
    # "block.count", "net.0.name", "vcpu.maximum": only <group>.<N>.<suffix> with a numeric N counts.
    odd = {"state.state": 1, "vcpu.current": 1, "block.count": 9, "block.x.rd.bytes": 5, "block.0.rd.bytes": 1}
    assert read(odd).disk_read_bytes == 1


def test_a_paused_guest_is_not_running_and_missing_groups_read_none() -> None:
    # What NOWAIT leaves of a guest whose QEMU is busy with a job, paused: state only.
    c = read({"state.state": 3, "state.reason": 1})
    assert c.running is False
    assert c.vcpus == 0
    assert c.cpu_time_ns is None and c.vcpu_time_ns is None and c.vcpu_wait_ns is None
    assert c.memory_kib is None and c.disk_read_bytes is None and c.net_rx_bytes is None


def test_boot_id_changes_with_the_domain_id_and_the_host() -> None:
    assert boot_id("qemu:///system", 7) != boot_id("qemu:///system", 8)
    assert boot_id("qemu+tcp://10.0.0.1/system", 7) != boot_id("qemu+tcp://10.0.0.2/system", 7)


def test_host_counters_from_the_nodes_figures() -> None:
    cpu = {"kernel": 1189070000000, "user": 5602290000000, "idle": 14262860000000, "iowait": 80640000000}
    memory = {"total": 24684092, "free": 23737004, "buffers": 2092, "cached": 394792}
    h = host_counters(cpu, memory, 2, at=5.0)
    assert h.cpus == 2 and h.at == 5.0
    assert h.cpu_busy_ns == 1189070000000 + 5602290000000
    assert h.cpu_total_ns == sum(cpu.values())
    assert h.memory_total_kib == 24684092
    assert h.memory_free_kib == 23737004 + 2092 + 394792


def test_host_counters_with_nothing_reported_are_none() -> None:
    h = host_counters({}, {}, 4, at=5.0)
    assert (h.cpu_busy_ns, h.cpu_total_ns, h.memory_total_kib, h.memory_free_kib) == (None, None, None, None)


def test_the_vm_id_is_read_from_the_metadata_element() -> None:
    assert vm_id_from_metadata('<vm id="vm-42"/>') == "vm-42"
    assert vm_id_from_metadata('<flexvm:vm xmlns:flexvm="https://flexvm.dev/xmlns/vm/1" id="vm-7"/>') == "vm-7"


# --------------------------------------------------------------------------- read_counters, no libvirtd


class _Dom:
    def __init__(self, name: str, domain_id: int, metadata: str | int) -> None:
        self._name, self._id, self._metadata = name, domain_id, metadata
        self._uuid = str(uuid.uuid4())
        self.metadata_calls = 0

    def name(self) -> str:
        return self._name

    def ID(self) -> int:  # noqa: N802 - libvirt's name
        return self._id

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return self._uuid

    def metadata(self, kind: int, uri: str, flags: int) -> str:
        self.metadata_calls += 1
        if isinstance(self._metadata, int):
            raise _error(self._metadata)
        return self._metadata


def _error(code: int) -> Exception:
    libvirt = pytest.importorskip("libvirt")

    class _Error(libvirt.libvirtError):  # type: ignore[misc,name-defined]
        def get_error_code(self) -> int:
            return code

    return _Error(f"error {code}")


class _Conn:
    def __init__(self, domains: list[tuple[_Dom, dict[str, Any]]]) -> None:
        self.domains = domains
        self.stats_calls: list[tuple[int, int]] = []

    def getAllDomainStats(self, stats: int, flags: int) -> list[tuple[_Dom, dict[str, Any]]]:  # noqa: N802
        self.stats_calls.append((stats, flags))
        return self.domains

    def getURI(self) -> str:  # noqa: N802
        return "qemu+tcp://10.0.0.1/system"

    def getCPUStats(self, cpu: int, flags: int) -> dict[str, int]:  # noqa: N802
        return {"kernel": 10, "user": 20, "idle": 70, "iowait": 5}

    def getMemoryStats(self, cell: int, flags: int) -> dict[str, int]:  # noqa: N802
        return {"total": 1000, "free": 100, "buffers": 10, "cached": 200}

    def getInfo(self) -> list[Any]:  # noqa: N802
        return ["x86_64", 1, 4, 2000, 1, 1, 4, 1]


def test_read_counters_makes_one_stats_call_and_reads_metadata_once_per_domain() -> None:
    libvirt = pytest.importorskip("libvirt")
    ours = _Dom("ours", 7, '<vm id="vm-ours"/>')
    foreign = _Dom("foreign", 8, libvirt.VIR_ERR_NO_DOMAIN_METADATA)
    conn = _Conn([(ours, SYSTEM_GUEST), (foreign, LAB_GUEST)])

    for _ in range(3):
        reading = stats.read_counters(conn)

    assert len(conn.stats_calls) == 3
    groups, flags = conn.stats_calls[0]
    for group in ("STATE", "CPU_TOTAL", "BALLOON", "VCPU", "INTERFACE", "BLOCK"):
        assert groups & getattr(libvirt, f"VIR_DOMAIN_STATS_{group}")
    assert flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
    assert ours.metadata_calls == 1 and foreign.metadata_calls == 1, "the VM id is cached by UUID"
    by_name = {g.name: g for g in reading.guests}
    assert by_name["ours"].vm_id == "vm-ours"
    assert by_name["foreign"].vm_id is None
    assert by_name["ours"].boot_id == "qemu+tcp://10.0.0.1/system#7"
    host = reading.host
    assert (host.cpus, host.cpu_busy_ns, host.cpu_total_ns) == (4, 30, 105)
    assert (host.memory_total_kib, host.memory_free_kib) == (1000, 310)


def test_a_domain_that_vanished_since_the_stats_is_left_out() -> None:
    libvirt = pytest.importorskip("libvirt")
    gone = _Dom("gone", 9, libvirt.VIR_ERR_NO_DOMAIN)
    here = _Dom("here", 10, '<vm id="vm-here"/>')
    reading = stats.read_counters(_Conn([(gone, SYSTEM_GUEST), (here, SYSTEM_GUEST)]))
    assert [g.name for g in reading.guests] == ["here"]


def test_other_metadata_errors_are_not_swallowed() -> None:
    libvirt = pytest.importorskip("libvirt")
    broken = _Dom("broken", 11, libvirt.VIR_ERR_INTERNAL_ERROR)
    with pytest.raises(libvirt.libvirtError):
        stats.read_counters(_Conn([(broken, SYSTEM_GUEST)]))
