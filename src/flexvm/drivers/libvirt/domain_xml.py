"""Domain XML, built with ElementTree from a GuestSpec. Pure functions: no libvirt, no I/O.

Every value reaches the XML as an attribute or text node, so ElementTree escapes it; nothing is
ever formatted into XML as a string.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePosixPath

from flexvm.model.guest import GuestDisk, GuestNic, GuestSpec
from flexvm.model.storage import SharedStorage

METADATA_NS = "https://flexvm.dev/xmlns/vm/1"
ET.register_namespace("flexvm", METADATA_NS)


@dataclass(frozen=True)
class PoolPaths:
    """Where the host keeps its two pools; volumes become paths under these."""

    images: PurePosixPath
    instances: PurePosixPath


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def build_domain_xml(spec: GuestSpec, paths: PoolPaths) -> str:
    domain = ET.Element("domain", type=spec.accelerator.domain_type)
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", spec.uuid)
    metadata = _sub(domain, "metadata")
    ET.SubElement(metadata, f"{{{METADATA_NS}}}vm", id=spec.vm_id)
    if has_memory_ceiling(spec):
        # The ceiling for DIMM hot-plug. QEMU reserves guest address space for it (above 4 GiB),
        # not memory; but a guest kernel that sees that hot-pluggable range above 4 GiB sets up a
        # 64 MiB swiotlb bounce buffer, whatever the ceiling (unless booted with swiotlb=noforce).
        _sub(domain, "maxMemory", str(max_memory_kib(spec)), slots=str(spec.memory_slots), unit="KiB")
    _sub(domain, "memory", str(spec.memory_mib * 1024), unit="KiB")
    _sub(domain, "currentMemory", str(spec.memory_mib * 1024), unit="KiB")
    if has_vcpu_ceiling(spec):
        # vCPUs 0..vcpus-1 run from the start; the rest exist as hot-pluggable slots.
        _sub(domain, "vcpu", str(max_vcpus(spec)), placement="static", current=str(spec.vcpus))
    else:
        _sub(domain, "vcpu", str(spec.vcpus), placement="static")
    _os_element(domain, spec, paths)
    features = _sub(domain, "features")
    # Without ACPI a guest's poweroff only halts, and the power button (graceful stop) does nothing.
    # ACPI is also how the guest hears of hot-plugged (and unplugged) vCPUs and DIMMs.
    _sub(features, "acpi")
    _sub(features, "apic")
    _cpu_element(domain, spec)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    for disk in spec.disks:
        _disk_element(devices, disk, spec, paths)
    for nic in spec.nics:
        _nic_element(devices, nic)
    _console_elements(devices, spec, paths)
    balloon = _sub(devices, "memballoon", model="virtio")
    _sub(balloon, "stats", period="5")
    # No USB controller, no graphics: less to emulate, a faster boot under TCG.
    _sub(devices, "controller", type="usb", model="none")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def has_vcpu_ceiling(spec: GuestSpec) -> bool:
    return spec.max_vcpus is not None and spec.max_vcpus > spec.vcpus


def has_memory_ceiling(spec: GuestSpec) -> bool:
    return spec.max_memory_mib is not None and spec.max_memory_mib > spec.memory_mib and spec.memory_slots > 0


def max_vcpus(spec: GuestSpec) -> int:
    """The vCPU ceiling the domain is defined with (its vcpus when it has none)."""
    return spec.max_vcpus if has_vcpu_ceiling(spec) and spec.max_vcpus is not None else spec.vcpus


def max_memory_kib(spec: GuestSpec) -> int:
    """The memory ceiling the domain is defined with (its memory when it has none)."""
    if has_memory_ceiling(spec) and spec.max_memory_mib is not None:
        return spec.max_memory_mib * 1024
    return spec.memory_mib * 1024


def _cpu_element(domain: ET.Element, spec: GuestSpec) -> None:
    kvm = spec.accelerator.domain_type == "kvm"
    if not kvm and not has_memory_ceiling(spec):
        return
    # KVM passes the host's CPU model; TCG keeps QEMU's default model (qemu64), so that its
    # <cpu> element carries nothing but the NUMA cell.
    cpu = _sub(domain, "cpu", mode="host-model") if kvm else _sub(domain, "cpu")
    if has_memory_ceiling(spec):
        # DIMMs are plugged into a NUMA node; libvirt refuses <maxMemory> without one ("At least
        # one numa node has to be configured when enabling memory hotplug"). The one cell holds
        # every vCPU up to the ceiling (QEMU warns about vCPUs outside any node) and the boot
        # memory; DIMMs add to it.
        numa = _sub(cpu, "numa")
        last = max_vcpus(spec) - 1
        cpus = "0" if last == 0 else f"0-{last}"  # libvirt's own spelling of a one-CPU range
        _sub(numa, "cell", id="0", cpus=cpus, memory=str(spec.memory_mib * 1024), unit="KiB")


def _os_element(domain: ET.Element, spec: GuestSpec, paths: PoolPaths) -> None:
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel is not None:
        _sub(os_element, "kernel", str(paths.images / spec.kernel.kernel_volume))
        if spec.kernel.initrd_volume:
            _sub(os_element, "initrd", str(paths.images / spec.kernel.initrd_volume))
        _sub(os_element, "cmdline", spec.kernel.cmdline)
    else:
        _sub(os_element, "boot", dev="hd")


def instance_dir(store: SharedStorage | None, paths: PoolPaths) -> PurePosixPath:
    """Where a guest's disks and console log are: the shared directory, or the host's instance pool."""
    return paths.instances if store is None else PurePosixPath(store.path)


def _disk_element(devices: ET.Element, disk: GuestDisk, spec: GuestSpec, paths: PoolPaths) -> None:
    element = _sub(devices, "disk", type="file", device=disk.device)
    if spec.store is not None and disk.device == "disk":
        # Another host opens the same file after a migration: nothing may sit in this host's page
        # cache (libvirt refuses to migrate a disk on a shared filesystem with any other cache mode).
        _sub(element, "driver", name="qemu", type=disk.format, cache="none")
    else:
        _sub(element, "driver", name="qemu", type=disk.format)
    _sub(element, "source", file=str(instance_dir(spec.store, paths) / disk.volume))
    if disk.device == "cdrom":
        _sub(element, "target", dev=disk.target, bus="sata" if disk.target.startswith("sd") else "ide")
        _sub(element, "readonly")
    else:
        _sub(element, "target", dev=disk.target, bus="virtio")


def _nic_element(devices: ET.Element, nic: GuestNic) -> None:
    element = _sub(devices, "interface", type=nic.kind)
    _sub(element, "mac", address=nic.mac)
    if nic.kind == "bridge":
        if not nic.source:
            raise ValueError("a bridge NIC needs the bridge's name")
        _sub(element, "source", bridge=nic.source)
    _sub(element, "model", type="virtio")
    if nic.isolation is not None:
        if not nic.ip:
            raise ValueError("an isolated NIC needs its address")
        # The host's libvirtd applies the project's filter to this NIC, with its own address
        # and MAC as the only ones it may send from (see nwfilter_xml).
        filterref = _sub(element, "filterref", filter=nic.isolation)
        _sub(filterref, "parameter", name="IP", value=nic.ip)
        _sub(filterref, "parameter", name="MAC", value=nic.mac)


def _console_elements(devices: ET.Element, spec: GuestSpec, paths: PoolPaths) -> None:
    serial = _sub(devices, "serial", type="pty")
    if spec.console_log:
        # append: the log outlives restarts, so a console shows every boot of the VM.
        _sub(serial, "log", file=str(instance_dir(spec.store, paths) / spec.console_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def interface_xml(nic: GuestNic) -> str:
    """One ``<interface>`` on its own, as ``virDomainUpdateDeviceFlags`` takes it (matched by MAC)."""
    holder = ET.Element("devices")
    _nic_element(holder, nic)
    return ET.tostring(holder[0], encoding="unicode")


def nic_filter(xml: str, mac: str) -> str | None:
    """The filter the domain's NIC with ``mac`` names, or None (no filter, or no such NIC)."""
    for interface in ET.fromstring(xml).iterfind("devices/interface"):
        found = interface.find("mac")
        if found is not None and found.get("address", "").lower() == mac.lower():
            filterref = interface.find("filterref")
            return None if filterref is None else filterref.get("filter")
    return None


def vm_id_from_xml(xml: str) -> str | None:
    """The flexvm VM id recorded in a domain's metadata, or None for a domain flexvm did not make."""
    root = ET.fromstring(xml)
    element = root.find(f"metadata/{{{METADATA_NS}}}vm")
    return None if element is None else element.get("id")


def disk_sources(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    return [s.get("file", "") for s in root.findall("devices/disk/source") if s.get("file")]


# libvirt's memory units, as multiples of a byte (it writes KiB back, but a hand-made domain may not).
_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}


def _kib(element: ET.Element) -> int:
    unit = _UNIT_BYTES[element.get("unit", "KiB").lower()]
    return int((element.text or "0").strip()) * unit // 1024


def ceilings_from_xml(xml: str) -> tuple[int, int]:
    """(max vCPUs, max memory in KiB) a domain may be hot-plugged up to.

    Read from what ``XMLDesc`` gives: ``<vcpu>``'s text is the vCPU ceiling (``current=`` is what
    is plugged); ``<maxMemory>`` is the memory ceiling, and without one it is ``<memory>`` (the
    boot memory plus any DIMMs), as nothing more can be plugged.
    """
    root = ET.fromstring(xml)
    vcpu = root.find("vcpu")
    vcpus = int((vcpu.text or "0").strip()) if vcpu is not None else 0
    ceiling = root.find("maxMemory")
    if ceiling is None:
        ceiling = root.find("memory")
    return vcpus, (0 if ceiling is None else _kib(ceiling))


def domain_type_from_xml(xml: str) -> str:
    """The domain's type: "kvm", or "qemu" for TCG."""
    return ET.fromstring(xml).get("type", "")


def memory_slots(xml: str) -> tuple[int, int]:
    """(slots for DIMMs, slots in use) of a domain's XML. DIMMs and NVDIMMs take a slot each
    (virtio-mem devices, which flexvm does not make, take none)."""
    root = ET.fromstring(xml)
    ceiling = root.find("maxMemory")
    slots = int(ceiling.get("slots", "0")) if ceiling is not None else 0
    used = [m for m in root.findall("devices/memory") if m.get("model") in ("dimm", "nvdimm")]
    return slots, len(used)


def dimm_xml(size_mib: int, node: int = 0) -> str:
    """The device XML of one DIMM of ``size_mib`` in NUMA node ``node``."""
    memory = ET.Element("memory", model="dimm")
    target = _sub(memory, "target")
    _sub(target, "size", str(size_mib * 1024), unit="KiB")
    _sub(target, "node", str(node))
    ET.indent(memory)
    return ET.tostring(memory, encoding="unicode")
