"""Domain XML from a GuestSpec: the shape libvirt gets, and that no value can change that shape.

Pins: domain type per accelerator, identity and metadata, memory in KiB, ACPI, direct kernel
boot, disks and the cloud-init cdrom, NICs, the logged serial console, the balloon, and that
hostile strings are escaped (they round-trip as text and add no elements).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import PurePosixPath

import pytest

from flexvm.drivers.libvirt.domain_xml import (
    METADATA_NS,
    PoolPaths,
    build_domain_xml,
    disk_sources,
    vm_id_from_xml,
)
from flexvm.model.guest import BootKernel, GuestDisk, GuestNic, GuestSpec
from flexvm.model.host import Accelerator
from flexvm.model.storage import SharedStorage

PATHS = PoolPaths(images=PurePosixPath("/srv/pool/images"), instances=PurePosixPath("/srv/pool/instances"))
VM_ID = "6f1c1b0e-3d7a-4b59-9a57-2c1e8f0d4a11"


def make_spec(**changes: object) -> GuestSpec:
    spec = GuestSpec(
        name="web1",
        uuid=VM_ID,
        vm_id=VM_ID,
        vcpus=2,
        memory_mib=1536,
        accelerator=Accelerator.TCG,
        disks=(GuestDisk("web1-os.qcow2"), GuestDisk("web1-seed.iso", "cdrom", "raw", "hdc")),
        nics=(GuestNic("52:54:00:aa:bb:cc"),),
        kernel=BootKernel("tiny-0123456789ab.kernel", "tiny-0123456789ab.initrd", "console=ttyS0 quiet"),
        console_log="web1.console.log",
    )
    return dataclasses.replace(spec, **changes)


def parse(spec: GuestSpec) -> ET.Element:
    return ET.fromstring(build_domain_xml(spec, PATHS))


def only(root: ET.Element, path: str) -> ET.Element:
    found = root.findall(path)
    assert len(found) == 1, f"expected exactly one {path}, found {len(found)}"
    return found[0]


# --- the domain itself ---------------------------------------------------------------------


@pytest.mark.parametrize(("accelerator", "domain_type"), [(Accelerator.KVM, "kvm"), (Accelerator.TCG, "qemu")])
def test_domain_type_follows_the_accelerator(accelerator: Accelerator, domain_type: str) -> None:
    root = parse(make_spec(accelerator=accelerator))
    assert root.tag == "domain"
    assert root.get("type") == domain_type


def test_kvm_passes_the_host_cpu_model_and_tcg_does_not() -> None:
    assert only(parse(make_spec(accelerator=Accelerator.KVM)), "cpu").get("mode") == "host-model"
    assert parse(make_spec(accelerator=Accelerator.TCG)).find("cpu") is None


def test_name_and_uuid() -> None:
    root = parse(make_spec())
    assert only(root, "name").text == "web1"
    assert only(root, "uuid").text == VM_ID


def test_memory_and_current_memory_are_in_kib() -> None:
    root = parse(make_spec(memory_mib=1536))
    for tag in ("memory", "currentMemory"):
        element = only(root, tag)
        assert element.get("unit") == "KiB"
        assert element.text == str(1536 * 1024)


def test_vcpu_count() -> None:
    assert only(parse(make_spec(vcpus=3)), "vcpu").text == "3"


def test_acpi_is_on_so_poweroff_powers_off() -> None:
    only(parse(make_spec()), "features/acpi")


def test_poweroff_ends_the_domain() -> None:
    assert only(parse(make_spec()), "on_poweroff").text == "destroy"


# --- boot ----------------------------------------------------------------------------------


def test_direct_kernel_boot_uses_image_pool_paths_and_the_cmdline() -> None:
    root = parse(make_spec())
    assert only(root, "os/type").text == "hvm"
    assert only(root, "os/kernel").text == "/srv/pool/images/tiny-0123456789ab.kernel"
    assert only(root, "os/initrd").text == "/srv/pool/images/tiny-0123456789ab.initrd"
    assert only(root, "os/cmdline").text == "console=ttyS0 quiet"
    assert root.find("os/boot") is None


def test_kernel_without_initrd_has_no_initrd_element() -> None:
    root = parse(make_spec(kernel=BootKernel("k.kernel", None, "console=ttyS0")))
    assert only(root, "os/kernel").text == "/srv/pool/images/k.kernel"
    assert root.find("os/initrd") is None


def test_without_a_kernel_the_guest_boots_from_its_disk() -> None:
    root = parse(make_spec(kernel=None))
    assert only(root, "os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None
    assert root.find("os/cmdline") is None


# --- devices -------------------------------------------------------------------------------


def test_os_disk_is_a_virtio_qcow2_in_the_instance_pool() -> None:
    disks = parse(make_spec()).findall("devices/disk")
    os_disk = next(d for d in disks if d.get("device") == "disk")
    assert os_disk.get("type") == "file"
    assert only(os_disk, "driver").get("type") == "qcow2"
    assert only(os_disk, "source").get("file") == "/srv/pool/instances/web1-os.qcow2"
    target = only(os_disk, "target")
    assert (target.get("dev"), target.get("bus")) == ("vda", "virtio")
    assert os_disk.find("readonly") is None


def test_seed_is_a_readonly_cdrom_in_the_instance_pool() -> None:
    disks = parse(make_spec()).findall("devices/disk")
    assert len(disks) == 2
    cdrom = next(d for d in disks if d.get("device") == "cdrom")
    assert only(cdrom, "driver").get("type") == "raw"
    assert only(cdrom, "source").get("file") == "/srv/pool/instances/web1-seed.iso"
    assert only(cdrom, "target").get("dev") == "hdc"
    only(cdrom, "readonly")


def test_user_nic_has_its_mac_and_virtio_model() -> None:
    nic = only(parse(make_spec()), "devices/interface")
    assert nic.get("type") == "user"
    assert only(nic, "mac").get("address") == "52:54:00:aa:bb:cc"
    assert only(nic, "model").get("type") == "virtio"
    assert nic.find("source") is None


def test_bridge_nic_names_its_bridge() -> None:
    spec = make_spec(nics=(GuestNic("52:54:00:00:00:01"), GuestNic("52:54:00:00:00:02", "bridge", "br0")))
    nics = parse(spec).findall("devices/interface")
    assert [n.get("type") for n in nics] == ["user", "bridge"]
    bridge = nics[1]
    assert only(bridge, "mac").get("address") == "52:54:00:00:00:02"
    assert only(bridge, "source").get("bridge") == "br0"


@pytest.mark.parametrize("source", [None, ""])
def test_bridge_nic_without_a_source_is_refused(source: str | None) -> None:
    with pytest.raises(ValueError, match="bridge"):
        build_domain_xml(make_spec(nics=(GuestNic("52:54:00:00:00:02", "bridge", source),)), PATHS)


def test_serial_console_is_a_pty_logged_with_append() -> None:
    root = parse(make_spec())
    serial = only(root, "devices/serial")
    assert serial.get("type") == "pty"
    log = only(serial, "log")
    assert log.get("file") == "/srv/pool/instances/web1.console.log"
    assert log.get("append") == "on"
    assert only(serial, "target").get("port") == "0"
    console = only(root, "devices/console")
    assert console.get("type") == "pty"
    assert only(console, "target").get("type") == "serial"


def test_no_console_log_means_no_log_element() -> None:
    assert parse(make_spec(console_log="")).find("devices/serial/log") is None


def test_memballoon_reports_stats() -> None:
    balloon = only(parse(make_spec()), "devices/memballoon")
    assert balloon.get("model") == "virtio"
    assert only(balloon, "stats").get("period") == "5"


# --- metadata and reading back -------------------------------------------------------------


def test_metadata_carries_the_vm_id_and_reads_back() -> None:
    xml = build_domain_xml(make_spec(vm_id="the-vm-id"), PATHS)
    assert only(ET.fromstring(xml), f"metadata/{{{METADATA_NS}}}vm").get("id") == "the-vm-id"
    assert vm_id_from_xml(xml) == "the-vm-id"


def test_domain_without_flexvm_metadata_has_no_vm_id() -> None:
    assert vm_id_from_xml("<domain type='kvm'><name>other</name></domain>") is None
    assert vm_id_from_xml("<domain type='kvm'><metadata><x:vm xmlns:x='urn:else' id='1'/></metadata></domain>") is None


def test_disk_sources_lists_every_file_backed_disk() -> None:
    assert disk_sources(build_domain_xml(make_spec(), PATHS)) == [
        "/srv/pool/instances/web1-os.qcow2",
        "/srv/pool/instances/web1-seed.iso",
    ]


# --- hostile strings -----------------------------------------------------------------------

HOSTILE = 'a\'/><x y="1"/>&amp;&"<!-- --><![CDATA[z]]>'


def element_tags(root: ET.Element) -> list[str]:
    return sorted(element.tag for element in root.iter())


def test_hostile_strings_are_escaped_and_round_trip() -> None:
    baseline = element_tags(parse(make_spec()))
    hostile = make_spec(
        name=HOSTILE,
        uuid=HOSTILE,
        vm_id=HOSTILE,
        disks=(GuestDisk(HOSTILE), GuestDisk(HOSTILE + "seed", "cdrom", "raw", "hdc")),
        nics=(GuestNic(HOSTILE),),
        kernel=BootKernel(HOSTILE, HOSTILE, f"console=ttyS0 {HOSTILE}"),
        console_log=HOSTILE,
    )
    xml = build_domain_xml(hostile, PATHS)
    root = ET.fromstring(xml)
    assert element_tags(root) == baseline, "a value changed the document's structure"
    assert root.find(".//x") is None
    assert only(root, "name").text == HOSTILE
    assert only(root, "uuid").text == HOSTILE
    assert only(root, "os/cmdline").text == f"console=ttyS0 {HOSTILE}"
    assert only(root, "os/kernel").text == f"/srv/pool/images/{HOSTILE}"
    assert only(root, "devices/interface/mac").get("address") == HOSTILE
    assert only(root, "devices/serial/log").get("file") == f"/srv/pool/instances/{HOSTILE}"
    assert vm_id_from_xml(xml) == HOSTILE
    assert disk_sources(xml) == [f"/srv/pool/instances/{HOSTILE}", f"/srv/pool/instances/{HOSTILE}seed"]


def test_hostile_bridge_name_stays_an_attribute() -> None:
    spec = make_spec(nics=(GuestNic("52:54:00:00:00:02", "bridge", HOSTILE),))
    root = parse(spec)
    assert only(root, "devices/interface/source").get("bridge") == HOSTILE
    assert root.find(".//x") is None


def test_a_guest_on_shared_storage_has_its_disk_and_console_log_there_uncached() -> None:
    root = parse(make_spec(store=SharedStorage("nas", "/mnt/nas/flexvm")))
    disks = root.findall("devices/disk")
    os_disk = next(d for d in disks if d.get("device") == "disk")
    assert only(os_disk, "source").get("file", "").startswith("/mnt/nas/flexvm/")
    assert only(os_disk, "driver").get("cache") == "none"
    log = only(root, "devices/serial/log").get("file", "")
    assert log.startswith("/mnt/nas/flexvm/") and log.endswith(".console.log")
    local = parse(make_spec())
    local_disk = next(d for d in local.findall("devices/disk") if d.get("device") == "disk")
    assert only(local_disk, "source").get("file", "").startswith("/srv/pool/instances/")
    assert only(local_disk, "driver").get("cache") is None
