"""Choosing the accelerator: KVM only where it really runs a guest, TCG otherwise.

``/dev/kvm`` existing is not proof: in some nested setups it opens, libvirt offers the kvm
domain type, and yet a normal kernel hangs or QEMU aborts. So the probe boots a real kernel
under KVM through libvirt (no disk, no initrd: it panics on 'unable to mount root fs' within a
second or two) and accepts KVM only if that panic message reaches the serial console.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable

from flexvm.model.guest import BootKernel, GuestSpec
from flexvm.model.host import Accelerator, AcceleratorChoice

PROBE_NAME = "flexvm-kvm-probe"
PROBE_LOG = f"{PROBE_NAME}.console.log"
PROBE_DEADLINE = 20.0
# What a kernel that really ran prints when it finds no root filesystem.
BOOTED_MARKERS = (b"Kernel panic", b"VFS: Unable to mount root", b"Linux version")


def kvm_offered(capabilities_xml: str) -> bool:
    """Whether libvirt lists a kvm domain type for x86_64 guests."""
    root = ET.fromstring(capabilities_xml)
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if (
            arch is not None
            and arch.get("name") == "x86_64"
            and any(d.get("type") == "kvm" for d in arch.findall("domain"))
        ):
            return True
    return False


def probe_spec(kernel_volume: str) -> GuestSpec:
    return GuestSpec(
        name=PROBE_NAME,
        uuid=str(uuid.uuid4()),
        vm_id="kvm-probe",
        vcpus=1,
        memory_mib=128,
        accelerator=Accelerator.KVM,
        disks=(),
        kernel=BootKernel(kernel_volume, None, "console=ttyS0 panic=-1 quiet"),
        console_log=PROBE_LOG,
    )


def judge_probe(
    read_console: Callable[[], bytes], still_running: Callable[[], bool], deadline: float = PROBE_DEADLINE
) -> AcceleratorChoice:
    """Watch a started probe guest until its console shows a kernel ran, or give up."""
    end = time.monotonic() + deadline
    output = b""
    while time.monotonic() < end:
        output = read_console()
        if any(marker in output for marker in BOOTED_MARKERS):
            return AcceleratorChoice(Accelerator.KVM, "KVM ran a test guest's kernel to completion")
        if not still_running():
            output = read_console()
            if any(marker in output for marker in BOOTED_MARKERS):
                return AcceleratorChoice(Accelerator.KVM, "KVM ran a test guest's kernel to completion")
            return AcceleratorChoice(
                Accelerator.TCG,
                "KVM is offered but QEMU stopped before a test guest's kernel printed anything "
                "(nested virtualisation without support?); using TCG",
            )
        time.sleep(0.25)
    return AcceleratorChoice(
        Accelerator.TCG,
        f"KVM is offered but a test guest's kernel printed nothing in {deadline:.0f} s under it "
        "(nested virtualisation that cannot run ordinary guests?); using TCG",
    )
