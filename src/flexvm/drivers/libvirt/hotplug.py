"""Changing a guest's size while it runs: vCPUs, DIMMs, the balloon.

Functions over one libvirt ``virDomain``; ``LibvirtDriver`` wraps each call so that libvirt's own
errors become flexvm's. Requests the guest could never honour (outside its ceilings, a DIMM it
could not online whole) are refused here, before libvirt is asked, with a message naming the rule.

Every change is made to the running guest *and* to its persistent definition, so that it survives
a restart; a guest that is off has only its definition changed (it starts at the new size), and a
transient guest only its live state.

What the guest sees (the tiny image on machine ``pc``; checked with libvirt 9.0, QEMU 7.2, TCG):
- vCPUs arrive through ACPI; the guest onlines them (the tiny image within about a second).
- vCPU *unplug* is an ACPI eject request; the guest's kernel offlines the CPU and ejects it (in
  under 0.1 s). Under TCG, QEMU 7.2 then removes the vCPU but never emits DEVICE_DELETED for it
  (only for its lapic child), so libvirt times out after 5 s, keeps the vCPU in its live state
  for good, and the next vCPU plug crashes QEMU (heap corruption: the guest dies). ``set_vcpus``
  therefore refuses to unplug a running TCG guest; lowering the count of a stopped one is fine.
- DIMMs are ACPI memory devices in NUMA node 0. Linux onlines memory in blocks of 128 MiB on
  x86_64, so a DIMM must be a whole number of blocks. DIMMs in the definition are present at the
  next boot, but stay offline until the guest onlines them (unless its kernel was booted with
  ``memhp_default_state=online``).
- The balloon needs ``virtio_balloon`` loaded in the guest; the target is where the guest's
  memory goes *eventually* (the tiny image gets there in well under a second).
"""

from __future__ import annotations

import time
from typing import Any

from flexvm.drivers.libvirt.connection import error_code, require_libvirt
from flexvm.drivers.libvirt.domain_xml import ceilings_from_xml, dimm_xml, domain_type_from_xml, memory_slots
from flexvm.errors import HypervisorError
from flexvm.model.guest import MemoryStats

MEMORY_BLOCK_MIB = 128  # Linux's memory block size on x86_64 (below 64 GiB of RAM)
UNPLUG_GRACE_SECONDS = 20.0  # past libvirt's own 5 s, how long a slow guest may take to eject a vCPU
_POLL_SECONDS = 0.2


def _affect(dom: Any) -> int:
    """The libvirt flags that change the running guest and/or its definition, as it has them."""
    lv = require_libvirt()
    if not dom.isActive():
        return int(lv.VIR_DOMAIN_AFFECT_CONFIG)
    if dom.isPersistent():
        return int(lv.VIR_DOMAIN_AFFECT_LIVE | lv.VIR_DOMAIN_AFFECT_CONFIG)
    return int(lv.VIR_DOMAIN_AFFECT_LIVE)


def ceilings(dom: Any) -> tuple[int, int]:
    """(max vCPUs, max memory in KiB) of a domain, live when it runs: what guest_info reports."""
    return ceilings_from_xml(dom.XMLDesc(0))


# --------------------------------------------------------------------------- vCPUs


def set_vcpus(dom: Any, vcpus: int) -> None:
    """Plug or unplug vCPUs until ``vcpus`` are present, within 1..the domain's ceiling."""
    lv = require_libvirt()
    name = dom.name()
    ceiling = int(dom.vcpusFlags(lv.VIR_DOMAIN_VCPU_MAXIMUM))
    if not 1 <= vcpus <= ceiling:
        raise HypervisorError(
            f"{name}: {vcpus} vCPUs is outside 1..{ceiling} (the ceiling it was defined with)",
            details={"vcpus": vcpus, "max_vcpus": ceiling},
        )
    flags = _affect(dom)
    if not flags & lv.VIR_DOMAIN_AFFECT_LIVE:
        dom.setVcpusFlags(vcpus, flags)
        return
    live = int(dom.vcpusFlags(lv.VIR_DOMAIN_AFFECT_LIVE))
    if vcpus < live and domain_type_from_xml(dom.XMLDesc(0)) == "qemu":
        raise HypervisorError(
            f"{name}: cannot unplug vCPUs ({live} -> {vcpus}) while it runs under TCG: QEMU removes the "
            "vCPU but never reports it gone, and plugging any vCPU afterwards crashes it. Lower the count "
            "while the guest is off (it starts with the new count), or run it under KVM",
            details={"vcpus": vcpus, "present": live, "accelerator": "tcg"},
        )
    try:
        dom.setVcpusFlags(vcpus, flags)
    except lv.libvirtError as err:
        if error_code(err) != lv.VIR_ERR_OPERATION_TIMEOUT:
            raise
        # An unplug the guest had not finished within libvirt's 5 s (a busy guest): libvirt has
        # asked, and removes the vCPU when QEMU reports it gone. Wait for that, then record the
        # new count in the definition too (libvirt skipped that after the timeout).
        _wait_live_vcpus(dom, vcpus, err)
        if flags & lv.VIR_DOMAIN_AFFECT_CONFIG:
            dom.setVcpusFlags(vcpus, lv.VIR_DOMAIN_AFFECT_CONFIG)


def _wait_live_vcpus(dom: Any, vcpus: int, cause: Exception) -> None:
    lv = require_libvirt()
    deadline = time.monotonic() + UNPLUG_GRACE_SECONDS
    while True:
        live = int(dom.vcpusFlags(lv.VIR_DOMAIN_AFFECT_LIVE))
        if live == vcpus:
            return
        if time.monotonic() > deadline:
            raise HypervisorError(
                f"{dom.name()}: the guest has not released its vCPUs ({live} present, {vcpus} asked) "
                f"{UNPLUG_GRACE_SECONDS + 5:.0f} s after the unplug request; it must eject them itself "
                "(ACPI CPU hot-plug support in its kernel, CPUs it may take offline)",
                details={"vcpus": vcpus, "present": live},
            ) from cause
        time.sleep(_POLL_SECONDS)


# --------------------------------------------------------------------------- memory


def attach_dimm(dom: Any, size_mib: int) -> None:
    """Hot-plug one DIMM of ``size_mib`` into NUMA node 0, within the slots and the memory ceiling."""
    name = dom.name()
    if size_mib <= 0 or size_mib % MEMORY_BLOCK_MIB:
        raise HypervisorError(
            f"{name}: a DIMM of {size_mib} MiB cannot be used whole; the guest onlines memory in "
            f"blocks of {MEMORY_BLOCK_MIB} MiB, so use a positive multiple of {MEMORY_BLOCK_MIB} MiB",
            details={"size_mib": size_mib, "block_mib": MEMORY_BLOCK_MIB},
        )
    xml = dom.XMLDesc(0)
    slots, used = memory_slots(xml)
    _, ceiling_kib = ceilings_from_xml(xml)
    plugged_kib = int(dom.maxMemory())  # <memory>: the boot memory plus every DIMM
    if slots == 0:
        raise HypervisorError(
            f"{name}: it was defined without memory slots, so no DIMM can be plugged into it",
            details={"size_mib": size_mib},
        )
    if used >= slots:
        raise HypervisorError(
            f"{name}: all {slots} memory slots hold a DIMM already", details={"slots": slots, "used": used}
        )
    if plugged_kib + size_mib * 1024 > ceiling_kib:
        raise HypervisorError(
            f"{name}: {size_mib} MiB more would make {(plugged_kib // 1024) + size_mib} MiB, past its "
            f"ceiling of {ceiling_kib // 1024} MiB ({(ceiling_kib - plugged_kib) // 1024} MiB left)",
            details={"size_mib": size_mib, "plugged_mib": plugged_kib // 1024, "max_memory_mib": ceiling_kib // 1024},
        )
    dom.attachDeviceFlags(dimm_xml(size_mib), _affect(dom))


def set_balloon(dom: Any, memory_mib: int) -> None:
    """Ask the balloon to leave the guest ``memory_mib`` (of what is plugged); the guest gets there
    at its own pace. The target is kept in the definition (currentMemory) too, so the balloon
    inflates to it again early in the next boot: whoever picks a target must leave the guest enough
    to boot on, counting only its boot memory if its DIMMs come up offline (see the module notes)."""
    name = dom.name()
    plugged_kib = int(dom.maxMemory())
    if not 0 < memory_mib * 1024 <= plugged_kib:
        raise HypervisorError(
            f"{name}: a balloon target of {memory_mib} MiB is outside 1..{plugged_kib // 1024} MiB "
            "(what is plugged; plug a DIMM to go higher)",
            details={"memory_mib": memory_mib, "plugged_mib": plugged_kib // 1024},
        )
    dom.setMemoryFlags(memory_mib * 1024, _affect(dom))


def memory_stats(dom: Any) -> MemoryStats:
    """The balloon's figures. ``actual`` always; the guest's own (available, unused, usable)
    once its balloon driver has reported (every stats period, 5 s as flexvm defines guests)."""
    stats = dom.memoryStats()
    actual = stats.get("actual")
    if actual is None:  # libvirt leaves it out when QEMU has no balloon device
        actual = dom.info()[2]
    return MemoryStats(
        actual_kib=int(actual),
        available_kib=_maybe_int(stats.get("available")),
        unused_kib=_maybe_int(stats.get("unused")),
        usable_kib=_maybe_int(stats.get("usable")),
    )


def _maybe_int(value: Any) -> int | None:
    return None if value is None else int(value)
