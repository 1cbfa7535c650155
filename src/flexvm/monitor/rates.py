"""From two readings of cumulative counters to rates. Pure functions.

A counter that went down (the guest restarted or moved, so its counters began again), a changed
boot id, or a time step that is not forward (a clock change) gives no rate for that interval,
never a negative or absurd one. Gauges (memory) need only the latest reading.
"""

from __future__ import annotations

from flexvm.model.metrics import GuestCounters, HostCounters

MIB_KIB = 1024
# Readings further apart than this are not one interval but a gap (a host that did not answer).
MAX_INTERVAL_SECONDS = 600.0


def _delta(before: int | None, after: int | None) -> int | None:
    if before is None or after is None or after < before:
        return None
    return after - before


def _per_second(before: int | None, after: int | None, seconds: float) -> float | None:
    delta = _delta(before, after)
    return None if delta is None else delta / seconds


def _interval(before: float, after: float) -> float | None:
    seconds = after - before
    return seconds if 0 < seconds <= MAX_INTERVAL_SECONDS else None


def _percent(part_ns: int | None, seconds: float, cpus: int) -> float | None:
    if part_ns is None or cpus <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * part_ns / (seconds * 1e9 * cpus)))


def guest_gauges(now: GuestCounters) -> dict[str, float]:
    """Memory as the guest sees it (balloon statistics), when it reports them."""
    gauges: dict[str, float] = {}
    total = now.memory_available_kib
    spare = now.memory_usable_kib if now.memory_usable_kib is not None else now.memory_unused_kib
    if total is not None and spare is not None and total > 0:
        used = max(total - spare, 0)
        gauges["memory_used_mib"] = used / MIB_KIB
        gauges["memory_available_mib"] = spare / MIB_KIB
        gauges["memory_used_percent"] = 100.0 * used / total
    return gauges


def guest_rates(before: GuestCounters, now: GuestCounters) -> dict[str, float]:
    """Rates over the interval between two readings of one guest; {} across a reset or a gap."""
    seconds = _interval(before.at, now.at)
    if seconds is None or before.boot_id != now.boot_id or not (before.running and now.running):
        return {}
    rates: dict[str, float | None] = {}
    # The vCPUs' own time when reported (QEMU's I/O threads are not the guest's work), else all of it.
    busy = _delta(before.vcpu_time_ns, now.vcpu_time_ns)
    if busy is None:
        busy = _delta(before.cpu_time_ns, now.cpu_time_ns)
    rates["cpu_percent"] = _percent(busy, seconds, now.vcpus)
    rates["cpu_wait_percent"] = _percent(_delta(before.vcpu_wait_ns, now.vcpu_wait_ns), seconds, now.vcpus)
    for metric, field in (
        ("disk_read_bytes_per_s", "disk_read_bytes"),
        ("disk_write_bytes_per_s", "disk_write_bytes"),
        ("disk_read_ops_per_s", "disk_read_ops"),
        ("disk_write_ops_per_s", "disk_write_ops"),
        ("net_rx_bytes_per_s", "net_rx_bytes"),
        ("net_tx_bytes_per_s", "net_tx_bytes"),
        ("net_rx_packets_per_s", "net_rx_packets"),
        ("net_tx_packets_per_s", "net_tx_packets"),
    ):
        rates[metric] = _per_second(getattr(before, field), getattr(now, field), seconds)
    return {k: v for k, v in rates.items() if v is not None}


def host_gauges(now: HostCounters) -> dict[str, float]:
    gauges: dict[str, float] = {}
    if now.memory_total_kib and now.memory_free_kib is not None:
        used = max(now.memory_total_kib - now.memory_free_kib, 0)
        gauges["memory_used_mib"] = used / MIB_KIB
        gauges["memory_used_percent"] = 100.0 * used / now.memory_total_kib
    return gauges


def host_rates(before: HostCounters, now: HostCounters) -> dict[str, float]:
    if _interval(before.at, now.at) is None:
        return {}
    busy = _delta(before.cpu_busy_ns, now.cpu_busy_ns)
    total = _delta(before.cpu_total_ns, now.cpu_total_ns)
    if busy is None or not total:
        return {}
    return {"cpu_percent": max(0.0, min(100.0, 100.0 * busy / total))}
