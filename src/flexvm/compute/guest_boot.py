"""From a VM record to a guest spec, and watching a guest's console until it says it is up."""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from flexvm.drivers.base import Driver
from flexvm.errors import Action, OperationFailed, OperationTimeout, Remedy
from flexvm.model.guest import BootKernel, GuestDisk, GuestNic, GuestSpec, GuestState
from flexvm.model.host import Accelerator
from flexvm.model.image import Image
from flexvm.model.network import isolation_name
from flexvm.model.projects import project_of
from flexvm.model.vm import Nic, Vm

POLL_SECONDS = 0.2
MEMORY_SLOTS = 16  # DIMM slots for growing memory while running: one per grow


def image_volume(image: Image, kind: str) -> str:
    """Image files on hosts are named by content: '<name>-<sha12>.disk|kernel|initrd'."""
    return f"{image.volume_prefix}.{kind}"


def mac_for(vm_id: str, index: int = 0) -> str:
    """A stable locally-administered MAC (QEMU's 52:54:00 prefix) derived from the VM's id."""
    digest = hashlib.sha256(f"{vm_id}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def kernel_cmdline(image: Image, vm: Vm) -> str:
    # The VM's name is already restricted to [A-Za-z0-9-], so it is safe on a command line.
    base = image.cmdline or "console=ttyS0"
    return f"{base} flexvm.name={shlex.quote(vm.name)}"


def guest_spec(
    vm: Vm, image: Image, accelerator: Accelerator, bridge: str | None = None, *, isolated: bool = True
) -> GuestSpec:
    """The spec to define ``vm`` on a host; NICs on a flexvm network go onto the host's ``bridge``,
    behind their project's filter when the network is ``isolated`` (see ``Network.isolated``)."""
    disks = [GuestDisk(vm.os_disk.name, "disk", "qcow2", "vda")]
    seed = next((d for d in vm.disks if d.role == "seed"), None)
    if seed is not None:
        disks.append(GuestDisk(seed.name, "cdrom", "raw", "hdc"))
    kernel = None
    if image.kernel_file:
        kernel = BootKernel(
            image_volume(image, "kernel"),
            image_volume(image, "initrd") if image.initrd_file else None,
            kernel_cmdline(image, vm),
        )
    return GuestSpec(
        name=vm.domain_name,
        uuid=vm.id,
        vm_id=vm.id,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        accelerator=accelerator,
        disks=tuple(disks),
        nics=tuple(guest_nic(vm, nic, bridge, isolated=isolated) for nic in vm.nics),
        kernel=kernel,
        console_log=vm.console_log,
        max_vcpus=vm.max_vcpus if vm.max_vcpus and vm.max_vcpus > vm.vcpus else None,
        max_memory_mib=vm.max_memory_mib if vm.max_memory_mib and vm.max_memory_mib > vm.memory_mib else None,
        memory_slots=MEMORY_SLOTS if vm.max_memory_mib and vm.max_memory_mib > vm.memory_mib else 0,
        store=vm.storage,
    )


def guest_nic(vm: Vm, nic: Nic, bridge: str | None, *, isolated: bool = True) -> GuestNic:
    """A NIC on QEMU's user network, or on the host's bridge (behind its project's filter)."""
    if nic.network == "user":
        return GuestNic(nic.mac, "user")
    if not isolated:
        return GuestNic(nic.mac, "bridge", bridge)
    return GuestNic(nic.mac, "bridge", bridge, isolation_name(nic.network, project_of(vm.name)), nic.ip)


def parse_fields(line: str) -> dict[str, str]:
    """'flexvm: ready name=a cpus=2 ip=10.0.2.15' -> {'name': 'a', 'cpus': '2', 'ip': '10.0.2.15'}"""
    fields = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


@dataclass
class Readiness:
    seconds: float
    line: str
    facts: dict[str, str]


def console_length(driver: Driver, vm: Vm) -> int:
    return len(driver.console_read(vm.console_log, 0, store=vm.storage))


def wait_until_ready(
    driver: Driver,
    vm: Vm,
    marker: str | None,
    *,
    console_offset: int,
    started: float,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> Readiness:
    """Poll the console for the readiness line printed after ``console_offset``.

    Without a marker (an image that prints none), a running guest is as ready as we can tell.
    Fails fast if the guest stops while booting, with the console's tail as evidence.
    """
    deadline = started + timeout
    seen = b""
    while True:
        seen += driver.console_read(vm.console_log, console_offset + len(seen), store=vm.storage)
        text = seen.decode(errors="replace")
        if marker is not None:
            for line in text.splitlines():
                if marker in line:
                    return Readiness(clock() - started, line.strip(), parse_fields(line))
        info = driver.guest_info(vm.domain_name)
        if info is None or info.state in (GuestState.SHUTOFF, GuestState.CRASHED):
            raise OperationFailed(
                f"VM '{vm.name}' stopped while booting. Console tail:\n{tail(text)}",
                details={"console_tail": tail(text)},
            )
        if marker is None and info.state is GuestState.RUNNING:
            return Readiness(clock() - started, "", {})
        if clock() > deadline:
            raise OperationTimeout(
                f"VM '{vm.name}' did not report ready within {timeout:.0f} s; it is still running. "
                f"Console tail:\n{tail(text)}",
                details={"console_tail": tail(text), "timeout_seconds": timeout},
                remedy=Remedy(action=Action.READ_CONSOLE, subject={"vm": vm.name}),
            )
        time.sleep(POLL_SECONDS)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])
