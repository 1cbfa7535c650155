"""Domain XML for a guest that can grow while it runs: vCPU and memory ceilings.

Pins: ``<vcpu current=…>max</vcpu>`` for a vCPU ceiling; ``<maxMemory slots=…>`` plus the one NUMA
cell libvirt needs for DIMM hot-plug; the host CPU model kept under KVM and nothing else added under
TCG; no change at all for a guest without ceilings (or with ceilings that are no higher than what
it starts with); and the helpers that read ceilings and DIMM slots back from libvirt's XML.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import PurePosixPath
from typing import Any

import pytest

from flexvm.drivers.libvirt.domain_xml import (
    PoolPaths,
    build_domain_xml,
    ceilings_from_xml,
    dimm_xml,
    domain_type_from_xml,
    memory_slots,
)
from flexvm.model.guest import BootKernel, GuestDisk, GuestNic, GuestSpec
from flexvm.model.host import Accelerator

PATHS = PoolPaths(images=PurePosixPath("/srv/pool/images"), instances=PurePosixPath("/srv/pool/instances"))
VM_ID = "0b8f3c52-41a7-4f0e-9d1e-7a2b5c6d8e90"


def make_spec(**changes: Any) -> GuestSpec:
    spec = GuestSpec(
        name="grow1",
        uuid=VM_ID,
        vm_id=VM_ID,
        vcpus=1,
        memory_mib=256,
        accelerator=Accelerator.TCG,
        disks=(GuestDisk("grow1-os.qcow2"),),
        nics=(GuestNic("52:54:00:aa:bb:01"),),
        kernel=BootKernel("tiny.kernel", "tiny.initrd", "console=ttyS0 quiet"),
        console_log="grow1.console.log",
    )
    return dataclasses.replace(spec, **changes)


RESIZABLE = {"max_vcpus": 4, "max_memory_mib": 1024, "memory_slots": 4}


def parse(spec: GuestSpec) -> ET.Element:
    return ET.fromstring(build_domain_xml(spec, PATHS))


def only(root: ET.Element, path: str) -> ET.Element:
    found = root.findall(path)
    assert len(found) == 1, f"expected exactly one {path}, found {len(found)}"
    return found[0]


# --- without ceilings nothing changes ----------------------------------------------------------


@pytest.mark.parametrize("accelerator", [Accelerator.TCG, Accelerator.KVM])
@pytest.mark.parametrize(
    "ceilings",
    [
        {"max_vcpus": 1},  # a ceiling equal to the start is no ceiling
        {"max_vcpus": None, "max_memory_mib": None, "memory_slots": 0},
        {"max_memory_mib": 256, "memory_slots": 4},  # equal to the start
        {"max_memory_mib": 128, "memory_slots": 4},  # below it: nothing to plug
        {"max_memory_mib": 1024, "memory_slots": 0},  # no slot to plug into
    ],
)
def test_no_effective_ceiling_gives_the_xml_of_a_plain_guest(
    accelerator: Accelerator, ceilings: dict[str, Any]
) -> None:
    plain = build_domain_xml(make_spec(accelerator=accelerator), PATHS)
    assert build_domain_xml(make_spec(accelerator=accelerator, **ceilings), PATHS) == plain


def test_a_plain_guest_has_no_hotplug_elements() -> None:
    root = parse(make_spec())
    assert root.find("maxMemory") is None
    assert root.find("cpu") is None  # TCG: QEMU's default CPU model, no NUMA
    vcpu = only(root, "vcpu")
    assert vcpu.text == "1" and vcpu.get("current") is None
    assert vcpu.get("placement") == "static"


def test_a_plain_kvm_guest_keeps_just_the_host_cpu_model() -> None:
    cpu = only(parse(make_spec(accelerator=Accelerator.KVM)), "cpu")
    assert cpu.get("mode") == "host-model"
    assert list(cpu) == []


# --- vCPUs ---------------------------------------------------------------------------------------


def test_vcpu_ceiling_is_the_count_and_current_what_starts() -> None:
    vcpu = only(parse(make_spec(vcpus=2, max_vcpus=8)), "vcpu")
    assert vcpu.text == "8"
    assert vcpu.get("current") == "2"
    assert vcpu.get("placement") == "static"


def test_a_vcpu_ceiling_alone_adds_no_numa_and_no_max_memory() -> None:
    root = parse(make_spec(max_vcpus=4))
    assert root.find("maxMemory") is None
    assert root.find("cpu") is None


# --- memory --------------------------------------------------------------------------------------


def test_memory_ceiling_is_max_memory_in_kib_with_its_slots() -> None:
    root = parse(make_spec(**RESIZABLE))
    ceiling = only(root, "maxMemory")
    assert ceiling.get("unit") == "KiB"
    assert ceiling.text == str(1024 * 1024)
    assert ceiling.get("slots") == "4"
    # What the guest starts with is unchanged: the ceiling is room, not memory.
    for tag in ("memory", "currentMemory"):
        element = only(root, tag)
        assert (element.text, element.get("unit")) == (str(256 * 1024), "KiB")


def test_max_memory_comes_before_memory() -> None:
    tags = [child.tag for child in parse(make_spec(**RESIZABLE))]
    assert tags.index("maxMemory") < tags.index("memory") < tags.index("currentMemory")


def test_memory_ceiling_brings_one_numa_cell_with_every_vcpu_and_the_boot_memory() -> None:
    cpu = only(parse(make_spec(vcpus=2, max_vcpus=6, memory_mib=512, max_memory_mib=4096, memory_slots=2)), "cpu")
    cell = only(cpu, "numa/cell")
    assert cell.attrib == {"id": "0", "cpus": "0-5", "memory": str(512 * 1024), "unit": "KiB"}


def test_numa_cell_of_a_one_vcpu_guest_names_cpu_zero() -> None:
    cell = only(parse(make_spec(max_memory_mib=1024, memory_slots=1)), "cpu/numa/cell")
    assert cell.get("cpus") == "0"


def test_under_tcg_the_cpu_element_holds_only_the_numa_cell() -> None:
    cpu = only(parse(make_spec(**RESIZABLE)), "cpu")
    assert cpu.attrib == {}
    assert [child.tag for child in cpu] == ["numa"]


def test_under_kvm_the_numa_cell_sits_in_the_host_model_cpu() -> None:
    cpu = only(parse(make_spec(accelerator=Accelerator.KVM, **RESIZABLE)), "cpu")
    assert cpu.get("mode") == "host-model"
    assert [child.tag for child in cpu] == ["numa"]
    assert only(cpu, "numa/cell").get("cpus") == "0-3"


def test_ceilings_leave_every_device_as_it_was() -> None:
    plain = parse(make_spec())
    resizable = parse(make_spec(**RESIZABLE))
    assert ET.tostring(only(resizable, "devices")) == ET.tostring(only(plain, "devices"))
    assert ET.tostring(only(resizable, "os")) == ET.tostring(only(plain, "os"))


# --- reading ceilings and slots back -----------------------------------------------------------


def test_ceilings_read_back_from_the_built_xml() -> None:
    assert ceilings_from_xml(build_domain_xml(make_spec(**RESIZABLE), PATHS)) == (4, 1024 * 1024)


def test_without_ceilings_the_start_is_the_ceiling() -> None:
    assert ceilings_from_xml(build_domain_xml(make_spec(vcpus=2, memory_mib=768), PATHS)) == (2, 768 * 1024)


def test_ceilings_read_libvirts_own_xml() -> None:
    """As XMLDesc writes it back: single quotes, units spelled out, DIMMs in <devices>."""
    xml = """<domain type='qemu'>
      <maxMemory slots='4' unit='KiB'>1048576</maxMemory>
      <memory unit='KiB'>524288</memory>
      <currentMemory unit='KiB'>393216</currentMemory>
      <vcpu placement='static' current='2'>4</vcpu>
      <devices>
        <memory model='dimm'><target><size unit='KiB'>262144</size><node>0</node></target></memory>
        <memballoon model='virtio'><stats period='5'/></memballoon>
      </devices>
    </domain>"""
    assert ceilings_from_xml(xml) == (4, 1048576)
    assert memory_slots(xml) == (4, 1)
    assert domain_type_from_xml(xml) == "qemu"


@pytest.mark.parametrize(
    ("text", "unit", "kib"),
    [
        ("1", "GiB", 1024 * 1024),
        ("2048", "MiB", 2048 * 1024),
        ("1073741824", "b", 1024 * 1024),
        ("4", "G", 4 * 1024 * 1024),
    ],
)
def test_memory_units_are_converted_to_kib(text: str, unit: str, kib: int) -> None:
    xml = f"<domain type='kvm'><maxMemory slots='1' unit='{unit}'>{text}</maxMemory><vcpu>1</vcpu></domain>"
    assert ceilings_from_xml(xml) == (1, kib)


def test_a_domain_without_slots_has_none_free() -> None:
    assert memory_slots(build_domain_xml(make_spec(), PATHS)) == (0, 0)
    assert memory_slots(build_domain_xml(make_spec(**RESIZABLE), PATHS)) == (4, 0)


def test_dimm_device_xml() -> None:
    dimm = ET.fromstring(dimm_xml(256))
    assert dimm.tag == "memory" and dimm.get("model") == "dimm"
    size = only(dimm, "target/size")
    assert (size.text, size.get("unit")) == (str(256 * 1024), "KiB")
    assert only(dimm, "target/node").text == "0"
