"""Domain XML, built with ElementTree from a GuestSpec. Pure functions: no libvirt, no I/O.

Every value reaches the XML as an attribute or text node, so ElementTree escapes it; nothing is
ever formatted into XML as a string.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePosixPath

from flexvm.model.guest import GuestDisk, GuestNic, GuestSpec

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
    _sub(domain, "memory", str(spec.memory_mib * 1024), unit="KiB")
    _sub(domain, "currentMemory", str(spec.memory_mib * 1024), unit="KiB")
    _sub(domain, "vcpu", str(spec.vcpus), placement="static")
    _os_element(domain, spec, paths)
    features = _sub(domain, "features")
    # Without ACPI a guest's poweroff only halts, and the power button (graceful stop) does nothing.
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.accelerator.domain_type == "kvm":
        _sub(domain, "cpu", mode="host-model")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    for disk in spec.disks:
        _disk_element(devices, disk, paths)
    for nic in spec.nics:
        _nic_element(devices, nic)
    _console_elements(devices, spec, paths)
    balloon = _sub(devices, "memballoon", model="virtio")
    _sub(balloon, "stats", period="5")
    # No USB controller, no graphics: less to emulate, a faster boot under TCG.
    _sub(devices, "controller", type="usb", model="none")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


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


def _disk_element(devices: ET.Element, disk: GuestDisk, paths: PoolPaths) -> None:
    element = _sub(devices, "disk", type="file", device=disk.device)
    _sub(element, "driver", name="qemu", type=disk.format)
    _sub(element, "source", file=str(paths.instances / disk.volume))
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


def _console_elements(devices: ET.Element, spec: GuestSpec, paths: PoolPaths) -> None:
    serial = _sub(devices, "serial", type="pty")
    if spec.console_log:
        # append: the log outlives restarts, so a console shows every boot of the VM.
        _sub(serial, "log", file=str(paths.instances / spec.console_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def vm_id_from_xml(xml: str) -> str | None:
    """The flexvm VM id recorded in a domain's metadata, or None for a domain flexvm did not make."""
    root = ET.fromstring(xml)
    element = root.find(f"metadata/{{{METADATA_NS}}}vm")
    return None if element is None else element.get("id")


def disk_sources(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    return [s.get("file", "") for s in root.findall("devices/disk/source") if s.get("file")]
