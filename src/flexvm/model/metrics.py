"""Measurements: raw counters a driver reads, and the metric vocabulary flexvm derives from them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GuestCounters:
    """One reading of a guest's cumulative counters (monotonic until the guest restarts or moves).

    None where the hypervisor does not report a figure; rates are never made up from it.
    """

    name: str
    vm_id: str | None
    at: float  # seconds (time.time()) when read
    running: bool
    vcpus: int
    cpu_time_ns: int | None = None  # all vCPUs and QEMU's own threads
    vcpu_time_ns: int | None = None  # the vCPUs alone
    vcpu_wait_ns: int | None = None  # vCPUs runnable but waiting for a host CPU (contention)
    memory_kib: int | None = None  # what the balloon leaves the guest
    memory_available_kib: int | None = None  # the guest's own view, when its balloon driver reports
    memory_unused_kib: int | None = None
    memory_usable_kib: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    disk_read_ops: int | None = None
    disk_write_ops: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    net_rx_packets: int | None = None
    net_tx_packets: int | None = None
    boot_id: str | None = None  # changes when the guest's counters start again (restart, move)


@dataclass(frozen=True)
class HostCounters:
    at: float
    cpus: int
    cpu_busy_ns: int | None = None  # all CPUs: user + kernel (+ other non-idle)
    cpu_total_ns: int | None = None  # all CPUs: busy + idle (+ iowait)
    memory_total_kib: int | None = None
    memory_free_kib: int | None = None  # free + buffers + cached: what guests could still get


@dataclass(frozen=True)
class HostReading:
    host: HostCounters
    guests: tuple[GuestCounters, ...] = field(default_factory=tuple)


# The metric vocabulary (names as autoscale rules and queries use them), with units and ranges.
VM_METRICS: dict[str, str] = {
    "cpu_percent": "percent of the VM's vCPUs in use (100 = all of them busy)",
    "cpu_wait_percent": "percent of time the vCPUs waited for a host CPU (overcommit contention)",
    "memory_used_mib": "memory the guest is using (balloon statistics)",
    "memory_available_mib": "memory the guest could still use",
    "memory_used_percent": "memory in use as a percent of what the guest has",
    "disk_read_bytes_per_s": "bytes read from disk per second",
    "disk_write_bytes_per_s": "bytes written to disk per second",
    "disk_read_ops_per_s": "disk read operations per second",
    "disk_write_ops_per_s": "disk write operations per second",
    "net_rx_bytes_per_s": "network bytes received per second",
    "net_tx_bytes_per_s": "network bytes sent per second",
    "net_rx_packets_per_s": "network packets received per second",
    "net_tx_packets_per_s": "network packets sent per second",
}
HOST_METRICS: dict[str, str] = {
    "cpu_percent": "percent of the host's CPUs busy",
    "memory_used_mib": "host memory in use",
    "memory_used_percent": "host memory in use as a percent of all",
    "vm_count": "VMs running on the host",
    "vcpus_allocated": "vCPUs claimed by VMs on the host",
    "memory_allocated_mib": "memory claimed by VMs on the host",
}
# What a scale set records besides the rule metrics (model/autoscale.py's SCALESET_METRICS).
SCALESET_GAUGES: dict[str, str] = {
    "instances": "instances the set has (joining and serving)",
    "serving_instances": "instances serving behind the load balancer",
    "healthy_backends": "backends the load balancer's own health checks see as up",
}
STATISTICS = ("avg", "min", "max")
PERCENT_METRICS = {"cpu_percent", "cpu_wait_percent", "memory_used_percent"}
