"""A two-host lab for the migration contract: real libvirt hosts, guests bridged onto the lab switch.

``migration_lab`` (module scope; a test module imports ``migration_lab_fixture`` to use it)
brings up ``Lab(root).up(LabSpec(hosts=2))`` under a temporary root, uploads the tiny image's
volumes to both hosts, and hands out a ``MigrationLab`` that boots guests on a host with a DHCP
reservation and ``flexvm.tick=1``, pre-creating the guest's overlay on every other host (what a
migration with storage needs there). Its teardown removes the guests and always takes the lab
down, then checks that nothing of it is left on the machine.

Traffic goes only to addresses inside the lab, and only after checking that the root namespace
routes them through the lab link (``via_lab``); HTTP clients ignore proxy settings.

Only one lab can be up on a machine (its namespaces have fixed names): if another test run has
one up, the fixture waits for it to go (``LAB_WAIT``) rather than fail at once.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flexvm.errors import Conflict
from flexvm.lab import Lab, LabSpec, LabState
from flexvm.lab import netns as lab_netns
from flexvm.lab.config import reservation_line
from flexvm.lab.mountns import mounts_under
from flexvm.lab.plan import BLACKHOLE_METRIC, GATEWAY_LINK, HOST_NETNS_PREFIX
from flexvm.model.guest import BootKernel, GuestDisk, GuestNic, GuestSpec, GuestState, MigrationRequest
from flexvm.model.host import Accelerator
from flexvm.model.units import MIB
from tests.contract.conftest import DRIVER_KINDS, wait_for

LAB_WAIT = 300.0  # seconds to wait for another run's lab to go before giving up
BOOT_DEADLINE = 120.0  # a tiny guest with DHCP is ready in ~8 s under TCG; a loaded box needs slack
HTTP_DEADLINE = 60.0
HTTP_TIMEOUT = 15.0  # one request (a /dirty call is given its own)
OVERLAY_BYTES = 128 * MIB
TICK = re.compile(r"flexvm: tick (\d+) uptime=([0-9.]+)")
READY = re.compile(r"flexvm: ready([^\r\n]*)")


def via_lab(address: str) -> str:
    """Refuse to send anything to ``address`` unless the root namespace routes it into the lab."""
    device = lab_netns.route_device(address)
    assert device == GATEWAY_LINK, f"{address} would leave through {device}, not the lab link; not sending"
    return address


def host_of(uri: str) -> str:
    """qemu+tcp://10.213.0.11/system -> 10.213.0.11 (and drops a :port)."""
    return uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]


def lab_leftovers(root: Path) -> list[str]:
    """Anything of a lab still on the machine, described; empty when all is gone."""
    left = [f"netns {n}" for n in lab_netns.names(HOST_NETNS_PREFIX)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if GATEWAY_LINK in line]
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    left += [f"route {line}" for line in routes.splitlines() if f"metric {BLACKHOLE_METRIC}" in line]
    left += [f"mount {m}" for m in mounts_under(root)]
    if root.exists():
        left += [f"file {p}" for p in root.iterdir()]
    return left


def fields(text: str) -> dict[str, str]:
    """'name=a\\ncpus=1' or ' name=a cpus=1' -> {'name': 'a', 'cpus': '1'}"""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


@dataclass(frozen=True)
class Tick:
    number: int
    uptime: float


@dataclass
class LabGuest:
    spec: GuestSpec
    address: str
    reservation: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def log(self) -> str:
        return self.spec.console_log

    @property
    def overlay(self) -> str:
        return self.spec.disks[0].volume


class MigrationLab:
    """The lab's two hosts, a driver for each, and the guests booted on them."""

    def __init__(self, lab: Lab, state: LabState, image: Any, prefix: str) -> None:
        from flexvm.drivers.libvirt.driver import LibvirtDriver

        self.lab = lab
        self.state = state
        self.image = image
        self.prefix = prefix
        for host in state.hosts:
            via_lab(host.address)
        self.drivers = [LibvirtDriver(host.uri) for host in state.hosts]
        self.guests: list[LabGuest] = []
        self.volumes = {part: f"{prefix}tiny.{part}" for part in ("kernel", "initrd", "disk")}
        sources = {"kernel": image.kernel, "initrd": image.initrd, "disk": image.disk}
        for driver in self.drivers:
            for part, volume in self.volumes.items():
                driver.upload_image_volume(volume, sources[part])

    # --- hosts -----------------------------------------------------------------------------
    def uri(self, host: int) -> str:
        return self.state.hosts[host].uri

    def request(self, to: int, **options: Any) -> MigrationRequest:
        """A migration to host ``to``, its data sent to the host's lab address."""
        address = via_lab(self.state.hosts[to].address)
        return MigrationRequest(dest_uri=self.uri(to), dest_address=address, **options)

    # --- guests ----------------------------------------------------------------------------
    def boot(self, tag: str, *, host: int = 0, memory_mib: int = 256) -> LabGuest:
        """A guest on ``host`` with a reserved address, ticking, ready and answering HTTP; an empty
        overlay of its disk waits on every other host."""
        name = f"{self.prefix}{tag}-{secrets.token_hex(2)}"
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
        first = ipaddress.ip_address(self.state.dhcp_range[0])
        address = str(first + len(self.guests))
        reservation = self.state.dhcp_hosts_dir / f"{name}.conf"
        reservation.write_text(reservation_line(mac, address))
        overlay = f"{name}.qcow2"
        spec = GuestSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            vm_id=f"vm-{uuid.uuid4().hex}",
            vcpus=1,
            memory_mib=memory_mib,
            accelerator=Accelerator.TCG,
            disks=(GuestDisk(overlay),),
            nics=(GuestNic(mac, "bridge", self.state.hosts[host].bridge),),
            kernel=BootKernel(
                self.volumes["kernel"],
                self.volumes["initrd"],
                f"{self.image.cmdline} flexvm.name={name} flexvm.dhcp_wait=60 flexvm.tick=1",
            ),
            console_log=f"{name}.console.log",
        )
        guest = LabGuest(spec, address, reservation)
        self.guests.append(guest)
        for index, driver in enumerate(self.drivers):
            driver.create_overlay(overlay, self.volumes["disk"], "qcow2", OVERLAY_BYTES)
            if index == host:
                driver.define(spec)
                driver.start(name)
        ready = self.wait_console(guest, host, READY)
        assert fields(ready[1])["ip"] == address, ready[0]
        self.wait_http(guest)
        return guest

    def fresh_overlay(self, guest: LabGuest, host: int) -> None:
        """An empty overlay of the guest's disk on ``host`` (what a migration there needs), replacing
        whatever an earlier, failed migration left in it."""
        driver = self.drivers[host]
        driver.delete_instance_volume(guest.overlay)
        driver.create_overlay(guest.overlay, self.volumes["disk"], "qcow2", OVERLAY_BYTES)

    def hosts_running(self, guest: LabGuest, hosts: tuple[int, ...] = (0, 1)) -> dict[int, GuestState]:
        """Each of ``hosts`` that has the guest, with its state there."""
        found = {}
        for index in hosts:
            info = self.drivers[index].guest_info(guest.name)
            if info is not None:
                found[index] = info.state
        return found

    def persistent_on(self, guest: LabGuest, host: int) -> bool:
        info = self.drivers[host].guest_info(guest.name)
        return info is not None and info.persistent

    def console(self, guest: LabGuest, host: int) -> str:
        return self.drivers[host].console_read(guest.log).decode(errors="replace").replace("\r", "")

    def wait_console(
        self, guest: LabGuest, host: int, pattern: re.Pattern[str], *, nth: int = 1, timeout: float = BOOT_DEADLINE
    ) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            hits = list(pattern.finditer(self.console(guest, host)))
            return hits[nth - 1] if len(hits) >= nth else None

        try:
            what = f"{pattern.pattern!r} (#{nth}) on {guest.name}'s console on host {host + 1}"
            return wait_for(what, found, timeout)
        except AssertionError as err:
            tail = "\n".join(self.console(guest, host).splitlines()[-15:])
            raise AssertionError(f"{err}; console tail:\n{tail}") from None

    # --- the guest's HTTP server -----------------------------------------------------------
    def url(self, guest: LabGuest, path: str) -> str:
        return f"http://{via_lab(guest.address)}{path}"

    def get(self, guest: LabGuest, path: str, timeout: float = HTTP_TIMEOUT) -> httpx.Response:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            return client.get(self.url(guest, path), headers={"Connection": "close"})

    def wait_http(self, guest: LabGuest, timeout: float = HTTP_DEADLINE) -> httpx.Response:
        def answer() -> httpx.Response | None:
            try:
                response = self.get(guest, "/", timeout=5)
            except httpx.HTTPError:
                return None
            return response if response.status_code == 200 else None

        return wait_for(f"an HTTP answer from {guest.name} at {guest.address}", answer, timeout)

    def info(self, guest: LabGuest) -> dict[str, str]:
        response = self.get(guest, "/info")
        assert response.status_code == 200, response.text
        return fields(response.text)

    # --- teardown --------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Remove every guest from every host (the lab goes anyway; this checks the drivers can)."""
        problems = []
        for guest in self.guests:
            for index, driver in enumerate(self.drivers):
                for step, action in (
                    ("destroying", lambda d=driver, g=guest: d.destroy(g.name)),
                    ("undefining", lambda d=driver, g=guest: d.undefine(g.name)),
                    ("deleting the disk of", lambda d=driver, g=guest: d.delete_instance_volume(g.overlay)),
                    ("deleting the console of", lambda d=driver, g=guest: d.delete_instance_volume(g.log)),
                ):
                    try:
                        action()
                    except Exception as err:  # noqa: BLE001 - report all; the lab goes down regardless
                        problems.append(f"{step} {guest.name} on host {index + 1}: {type(err).__name__}: {err}")
            guest.reservation.unlink(missing_ok=True)
        for driver in self.drivers:
            driver.close()
        return problems


def ticks(text: str) -> list[Tick]:
    """Every ``flexvm: tick N uptime=S`` line of a console text, in order."""
    return [Tick(int(m[1]), float(m[2])) for m in TICK.finditer(text)]


def _lab_up(lab: Lab) -> LabState:
    """``lab.up``, waiting (bounded) while another run's lab occupies the machine."""
    deadline = time.monotonic() + LAB_WAIT
    while True:
        try:
            return lab.up(LabSpec(hosts=2))
        except Conflict as err:
            if "another lab seems up" not in err.message or time.monotonic() > deadline:
                raise
        time.sleep(5)


@pytest.fixture(scope="module", name="migration_lab")
def migration_lab_fixture(
    tmp_path_factory: pytest.TempPathFactory, tiny_image: Any, run_prefix: str
) -> Iterator[MigrationLab]:
    """Two lab hosts with the tiny image on both; always taken down, and checked gone, afterwards."""
    if "libvirt" not in DRIVER_KINDS:
        pytest.skip("FLEXVM_CONTRACT_DRIVERS leaves out libvirt: no lab")
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    root = tmp_path_factory.mktemp("migration-lab") / "lab"
    lab = Lab(root)
    hosts: MigrationLab | None = None
    problems: list[str] = []
    try:
        state = _lab_up(lab)
        hosts = MigrationLab(lab, state, tiny_image, f"{run_prefix}mig-")
        yield hosts
    finally:
        try:
            if hosts is not None:
                problems = hosts.close()
        finally:
            lab.down()
        left = lab_leftovers(root)
        assert not left, f"the migration lab left this behind: {left}"
        assert not problems, "could not remove the lab's guests through the driver:\n" + "\n".join(problems)
