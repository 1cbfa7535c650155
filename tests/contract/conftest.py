"""Fixtures for the driver contract: one ``driver`` fixture, parametrised over every driver.

Each driver gets a *contract host*: the driver itself, the image volumes a guest boots from
(uploaded once per session), and factories for guests. Every name made here starts with one
per-run prefix (``ct-<hex6>-``); when the session ends (also after failures) every domain and
volume with that prefix is destroyed, undefined and deleted, and then the host is checked —
independently of the driver under test — to hold nothing with the prefix any more.

``FLEXVM_CONTRACT_DRIVERS=fake`` runs the contract against the fake only (e.g. on a machine
without libvirtd); by default it runs against both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flexvm.drivers.base import Driver
from flexvm.drivers.fake import FakeDriver
from flexvm.model.guest import BootKernel, GuestDisk, GuestNic, GuestSpec, GuestState
from flexvm.model.host import Accelerator
from flexvm.model.storage import SharedStorage
from flexvm.model.units import MIB

LIBVIRT_URI = "qemu:///system"
UNREACHABLE_LIBVIRT_URI = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1
DRIVER_KINDS = [k.strip() for k in os.environ.get("FLEXVM_CONTRACT_DRIVERS", "fake,libvirt").split(",") if k.strip()]

READY_MARKER = "flexvm: ready"
BOOT_DEADLINE = 60.0  # a tiny guest is ready in 3-5 s under TCG; a loaded 2-core box needs slack
POLL = 0.1
OVERLAY_BYTES = 96 * MIB  # the tiny image's disk is 64 MiB; an overlay may be larger, never smaller
LINE = re.compile(r"^flexvm: (?P<kind>\S+)(?P<rest>.*)$", re.MULTILINE)


# --------------------------------------------------------------------------- helpers


def wait_for(what: str, condition: Callable[[], Any], timeout: float, interval: float = POLL) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def fields(rest: str) -> dict[str, str]:
    """' name=a cpus=1' -> {'name': 'a', 'cpus': '1'}"""
    return dict(item.split("=", 1) for item in rest.split() if "=" in item)


def console_lines(output: bytes, kind: str) -> list[dict[str, str]]:
    """The fields of every ``flexvm: <kind> ...`` line of a console log."""
    text = output.decode(errors="replace").replace("\r", "")
    return [fields(m["rest"]) for m in LINE.finditer(text) if m["kind"] == kind]


def tail(output: bytes, lines: int = 20) -> str:
    return "\n".join(output.decode(errors="replace").splitlines()[-lines:])


def qcow2_virtual_size(path: Path) -> int:
    """A qcow2's virtual size as qemu-img reads it from the file (-U: a running guest may hold it)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return int(json.loads(out)["virtual-size"])


# --------------------------------------------------------------------------- guests


@dataclass
class Guest:
    spec: GuestSpec
    overlay: str
    overlay_bytes: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def log(self) -> str:
        return self.spec.console_log


@dataclass
class BootVolumes:
    """Image-pool volumes a guest boots from (direct kernel boot, overlay on ``disk``)."""

    kernel: str
    initrd: str
    disk: str
    cmdline: str


def driver_kind(driver: Driver) -> str:
    return "fake" if isinstance(driver, FakeDriver) else "libvirt"


def image_volume_names(driver: Driver) -> list[str]:
    """The image pool's volumes: test-side introspection the Driver protocol does not offer."""
    if isinstance(driver, FakeDriver):
        return sorted(driver.host.images)
    from flexvm.drivers.libvirt.storage import IMAGE_POOL

    return driver.storage.names(IMAGE_POOL)  # type: ignore[attr-defined]


def sweep(driver: Driver, prefix: str) -> list[str]:
    """Remove every domain and volume named with ``prefix``; return what failed, and why."""
    problems: list[str] = []

    def attempt(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - keep sweeping, report everything at the end
            problems.append(f"{what}: {type(err).__name__}: {err}")

    names: list[str] = []
    attempt("listing guests", lambda: names.extend(g.name for g in driver.list_guests()))
    for name in names:
        if name.startswith(prefix):
            attempt(f"destroying {name}", lambda n=name: driver.destroy(n))
            attempt(f"undefining {name}", lambda n=name: driver.undefine(n))
    volumes: list[str] = []
    attempt("listing instance volumes", lambda: volumes.extend(driver.list_instance_volumes()))
    for volume in volumes:
        if volume.startswith(prefix):
            attempt(f"deleting instance volume {volume}", lambda v=volume: driver.delete_instance_volume(v))
    images: list[str] = []
    attempt("listing image volumes", lambda: images.extend(image_volume_names(driver)))
    for volume in images:
        if volume.startswith(prefix):
            attempt(f"deleting image volume {volume}", lambda v=volume: driver.delete_image_volume(v))
    return problems


@dataclass
class ContractHost:
    """One driver under contract, with what its tests need to make guests."""

    kind: str
    driver: Driver
    prefix: str
    scratch: Path
    boot: BootVolumes | None = None

    def name(self, tag: str) -> str:
        return f"{self.prefix}{self.kind}-{tag}-{secrets.token_hex(2)}"

    def instance_volume_bytes(self, volume: str) -> int:
        """The virtual size of an instance volume, read past the driver where there is a file."""
        if isinstance(self.driver, FakeDriver):
            return self.driver.host.instances[volume].size
        return qcow2_virtual_size(Path(str(self.driver.storage.paths.instances / volume)))  # type: ignore[attr-defined]

    # --- shared storage ----------------------------------------------------------------------
    def shared_store(self) -> SharedStorage:
        """A directory of this machine as shared storage (every driver instance here sees it)."""
        path = self.scratch / self.name("shared")
        path.mkdir(mode=0o755)
        return SharedStorage(path.name, str(path))

    def missing_store(self) -> SharedStorage:
        """Shared storage this host does not reach: not mounted there."""
        path = f"/srv/{self.name('not-mounted')}"
        if isinstance(self.driver, FakeDriver):
            self.driver.host.unreachable_stores.add(path)
        return SharedStorage(path.rsplit("/", 1)[1], path)

    def second_connection(self) -> Driver:
        """Another driver for the same host, as another server (or host) would open it."""
        if isinstance(self.driver, FakeDriver):
            return FakeDriver.for_uri(self.driver.uri)
        return type(self.driver)(self.driver.uri)  # type: ignore[call-arg]

    def forget_store(self, store: SharedStorage) -> None:
        """Remove the pool libvirt keeps over a shared directory (the fake keeps none)."""
        if isinstance(self.driver, FakeDriver):
            return
        import libvirt  # only here: the fake's runs need no libvirt bindings

        conn = libvirt.open(self.driver.uri)
        try:
            with contextlib.suppress(libvirt.libvirtError):
                pool = conn.storagePoolLookupByName(store.pool_name)
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
        finally:
            conn.close()

    # --- guests ----------------------------------------------------------------------------
    def spec(self, name: str, overlay: str) -> GuestSpec:
        assert self.boot is not None
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        return GuestSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            vm_id=f"vm-{uuid.uuid4().hex}",
            vcpus=1,
            memory_mib=256,
            accelerator=Accelerator.TCG,
            disks=(GuestDisk(overlay),),
            kernel=BootKernel(self.boot.kernel, self.boot.initrd, f"{self.boot.cmdline} flexvm.name={name}"),
            console_log=f"{name}.console.log",
            nics=(GuestNic(mac, "user"),),
        )

    def remove_guest(self, name: str) -> None:
        """Destroy, undefine and delete the volumes of one guest; each step tolerates absence."""
        self.driver.destroy(name)
        self.driver.undefine(name)
        for volume in (f"{name}.qcow2", f"{name}.console.log"):
            self.driver.delete_instance_volume(volume)

    def wait_console(
        self,
        guest: Guest,
        kind: str,
        *,
        timeout: float = BOOT_DEADLINE,
        nth: int = 1,
        match: Callable[[dict[str, str]], bool] = lambda f: True,
    ) -> dict[str, str]:
        """Wait for the ``nth`` console line ``flexvm: <kind>`` matching ``match``.

        Fails at once, with the console's tail, if the guest stops or vanishes meanwhile.
        """
        seen = {"output": b""}

        def found() -> dict[str, str] | None:
            output = self.driver.console_read(guest.log)
            seen["output"] = output
            hits = [f for f in console_lines(output, kind) if match(f)]
            if len(hits) >= nth:
                return hits[nth - 1]
            info = self.driver.guest_info(guest.name)
            if info is None or info.state is not GuestState.RUNNING:
                state = None if info is None else info.state
                raise AssertionError(f"{guest.name} is {state} before 'flexvm: {kind}' (#{nth})")
            return None

        try:
            return wait_for(f"'flexvm: {kind}' (#{nth}) on {guest.name}'s console", found, timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}; console tail:\n{tail(seen['output'])}") from None


class GuestFactory:
    """Makes guests (overlay + definition) and removes each of them at teardown."""

    def __init__(self, host: ContractHost) -> None:
        self.host = host
        self.names: list[str] = []

    def define(self, tag: str, *, overlay_bytes: int = OVERLAY_BYTES) -> Guest:
        assert self.host.boot is not None
        name = self.host.name(tag)
        self.names.append(name)
        overlay = f"{name}.qcow2"
        self.host.driver.create_overlay(overlay, self.host.boot.disk, "qcow2", overlay_bytes)
        spec = self.host.spec(name, overlay)
        self.host.driver.define(spec)
        return Guest(spec, overlay, overlay_bytes)

    def booted(self, tag: str) -> Guest:
        """A started guest whose console has shown its readiness line."""
        guest = self.define(tag)
        self.host.driver.start(guest.name)
        self.host.wait_console(guest, "ready")
        return guest

    def cleanup(self) -> None:
        errors = []
        for name in reversed(self.names):
            try:
                self.host.remove_guest(name)
            except Exception as err:  # noqa: BLE001 - remove the others; the session sweep retries
                errors.append(f"{name}: {type(err).__name__}: {err}")
        assert not errors, "could not remove guests:\n" + "\n".join(errors)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return f"ct-{secrets.token_hex(3)}-"


@pytest.fixture(scope="session")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The built-in tiny image, built once per session."""
    from flexvm.images.tiny.build import build_tiny_image

    return build_tiny_image(tmp_path_factory.mktemp("contract-tiny"))


def _make_driver(kind: str) -> Driver:
    if kind == "fake":
        return FakeDriver.for_uri(f"fake://contract-{uuid.uuid4().hex}")
    if kind == "libvirt":
        from flexvm.drivers.libvirt.driver import LibvirtDriver

        return LibvirtDriver(LIBVIRT_URI)
    raise ValueError(f"unknown driver kind {kind!r} in FLEXVM_CONTRACT_DRIVERS")


def unreachable_driver(kind: str) -> Driver:
    """A driver for a host that cannot be reached."""
    if kind == "fake":
        driver = FakeDriver.for_uri(f"fake://contract-unreachable-{uuid.uuid4().hex}")
        driver.host.reachable = False
        return driver
    from flexvm.drivers.libvirt.driver import LibvirtDriver

    return LibvirtDriver(UNREACHABLE_LIBVIRT_URI)


def _leftovers_on_libvirt(prefix: str) -> list[str]:
    """Domains and volumes with ``prefix`` on qemu:///system, read with a connection of our own
    (not the driver under test) and from the pool directories themselves."""
    import libvirt

    from flexvm.drivers.libvirt.storage import IMAGE_POOL, INSTANCE_POOL, STORAGE_ROOT

    found: list[str] = []
    conn = libvirt.open(LIBVIRT_URI)
    try:
        found += [f"domain {d.name()}" for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
        for pool_name in (IMAGE_POOL, INSTANCE_POOL):
            try:
                pool = conn.storagePoolLookupByName(pool_name)
            except libvirt.libvirtError:
                continue
            pool.refresh(0)
            found += [f"volume {pool_name}/{v}" for v in pool.listVolumes() if v.startswith(prefix)]
    finally:
        conn.close()
    for directory in (Path(str(STORAGE_ROOT / "images")), Path(str(STORAGE_ROOT / "instances"))):
        if directory.is_dir():
            found += [f"file {p}" for p in directory.iterdir() if p.name.startswith(prefix)]
    return sorted(set(found))


def _leftovers_on_fake(driver: FakeDriver, prefix: str) -> list[str]:
    host = driver.host
    return sorted(
        [f"domain {n}" for n in host.guests if n.startswith(prefix)]
        + [f"volume images/{n}" for n in host.images if n.startswith(prefix)]
        + [f"volume instances/{n}" for n in host.instances if n.startswith(prefix)]
    )


@pytest.fixture(scope="session", params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, run_prefix: str) -> Iterator[Driver]:
    """The driver under contract: the fake, or libvirt on qemu:///system.

    At the end of the session everything named with the run's prefix is removed, and the host
    is then checked (past the driver) to hold none of it.
    """
    kind: str = request.param
    driver = _make_driver(kind)
    try:
        yield driver
    finally:
        problems = sweep(driver, run_prefix)
        if isinstance(driver, FakeDriver):
            leftovers = _leftovers_on_fake(driver, run_prefix)
        else:
            leftovers = _leftovers_on_libvirt(run_prefix)
        driver.close()
        assert not problems and not leftovers, (
            f"the {kind} host still holds what the contract suite made (prefix {run_prefix!r}):\n"
            + "\n".join(leftovers + problems)
        )


@pytest.fixture(scope="session")
def contract_host(driver: Driver, run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> ContractHost:
    kind = driver_kind(driver)
    return ContractHost(kind, driver, run_prefix, tmp_path_factory.mktemp(f"contract-{kind}"))


@pytest.fixture(scope="session")
def booting_host(contract_host: ContractHost, request: pytest.FixtureRequest) -> ContractHost:
    """The contract host with boot volumes uploaded (once per session and driver)."""
    host = contract_host
    if host.boot is None:
        if host.kind == "libvirt":
            image = request.getfixturevalue("tiny_image")
            sources = {"kernel": image.kernel, "initrd": image.initrd, "disk": image.disk}
            cmdline = image.cmdline
        else:
            # The fake only records sizes; any small files will do.
            sources = {}
            for part, size in (("kernel", 4096), ("initrd", 2048), ("disk", 8192)):
                path = host.scratch / f"tiny.{part}"
                path.write_bytes(secrets.token_bytes(size))
                sources[part] = path
            cmdline = "console=ttyS0 quiet panic=-1"
        volumes = {}
        for part, source in sources.items():
            volume = f"{host.prefix}tiny.{part}"
            host.driver.upload_image_volume(volume, source)
            volumes[part] = volume
        host.boot = BootVolumes(volumes["kernel"], volumes["initrd"], volumes["disk"], cmdline)
    return host


@pytest.fixture
def guests(booting_host: ContractHost) -> Iterator[GuestFactory]:
    """Guests for one test; removed (destroyed, undefined, volumes deleted) after it."""
    factory = GuestFactory(booting_host)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def module_guests(booting_host: ContractHost) -> Iterator[GuestFactory]:
    factory = GuestFactory(booting_host)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="module")
def running_guest(module_guests: GuestFactory) -> Guest:
    """One booted guest per driver, shared by the tests that only look at it."""
    return module_guests.booted("shared")
