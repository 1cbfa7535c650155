"""The crash matrix's world: fake hosts, a network, a recording HAProxy, and servers that can die.

A ``World`` is what one case of the matrix runs in: a fresh SQLite database and home, three fake
hosts on network 'lan' (a, b, c; one fault domain each), an in-memory HAProxy and a probe that
always answers. ``world.open(crash=...)`` starts a server on it; when the server's run reaches the
crash point it dies as ``kill -9`` would: nothing more is written, and from that moment every call
it makes to a host or to HAProxy is cut off (a killed process makes no more calls), while what it
already did stays done.

Every call any server makes to a host is logged, so a case can compare how often each guest was
defined, started and migrated against a run without the kill. ``fingerprint`` reads the whole
world — records, guests, volumes, claims, addresses, DHCP entries, HAProxy's backends — in a form
that two runs can be compared by.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from flexvm.compute.hosts import HostChanges, HostRequest
from flexvm.config import Settings
from flexvm.drivers import connect
from flexvm.drivers.base import Driver
from flexvm.drivers.fake import FakeDriver, FakeHost
from flexvm.operations.run import Stop
from flexvm.platform import Platform
from flexvm.store.tables import AddressRow
from tests.unit.pool_helpers import fake_uri, pool_settings, run
from tests.unit.scaling_helpers import FakeHAProxy, Probe
from tests.unit.waiting import wait_done

# Calls whose count must not change because a server died: each defines, boots or moves a guest.
COUNTED = ("define", "start", "migrate", "set_vcpus", "attach_memory")


@dataclass(frozen=True)
class Point:
    """A moment of a run: the ``occurrence``-th time operations of ``kind`` reach ``step`` at
    ``moment`` (started, acted, done; see operations/run.py)."""

    kind: str
    step: str
    moment: str
    occurrence: int = 1

    @property
    def id(self) -> str:
        suffix = f"#{self.occurrence}" if self.occurrence > 1 else ""
        return f"{self.kind}:{self.step}:{self.moment}{suffix}"


class Cut:
    """A server's death, as the world outside it sees it: after ``die()``, its calls fail."""

    def __init__(self) -> None:
        self.dead = threading.Event()

    def check(self) -> None:
        if self.dead.is_set():
            raise Stop()


class Guarded:
    """Something of the world (a host's driver, the shared HAProxy) as one server reaches it:
    every call refused once that server has died, and, with ``log``, each call reported first."""

    def __init__(self, inner: Any, cut: Cut, log: Callable[[str, tuple[Any, ...]], None] | None = None) -> None:
        self._inner, self._cut, self._log = inner, cut, log

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self._cut.check()
            if self._log is not None:
                self._log(name, args)
            return value(*args, **kwargs)

        return call


@dataclass
class World:
    settings: Settings
    dhcp_dir: Path
    haproxy: FakeHAProxy = field(default_factory=FakeHAProxy)
    probe: Probe = field(default_factory=Probe)
    hosts: dict[str, FakeDriver] = field(default_factory=dict)
    calls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    reached: list[Point] = field(default_factory=list)  # every moment any server reached, in order
    servers: list[Platform] = field(default_factory=list)

    def open(self, crash: Point | None = None) -> Platform:
        """Start a server; with ``crash``, it dies when its run reaches that point."""
        cut = Cut()
        holder: list[Platform] = []
        seen: Counter[tuple[str, str, str]] = Counter()

        def failpoint(kind: str, step: str, moment: str) -> None:
            seen[(kind, step, moment)] += 1
            self.reached.append(Point(kind, step, moment, seen[(kind, step, moment)]))
            if crash is None or cut.dead.is_set():
                return
            if (kind, step, moment, seen[(kind, step, moment)]) == dataclasses.astuple(crash):
                cut.dead.set()
                holder[0].crash()
                raise Stop()

        def guarded_connect(uri: str) -> Driver:
            def log(method: str, args: tuple[Any, ...]) -> None:
                first = args[0] if args else ""
                subject = first if isinstance(first, str) else str(getattr(first, "name", ""))  # a GuestSpec
                self.calls[(uri, method, subject)] += 1

            return Guarded(connect(uri), cut, log)  # type: ignore[return-value]

        platform = Platform.open(self.settings, guarded_connect, balancer=None, prober=self.probe, failpoint=failpoint)
        platform.balancer.haproxy = Guarded(self.haproxy, cut)  # type: ignore[assignment]
        platform.collect_metrics = False
        platform.run_scaling = False
        holder.append(platform)
        self.servers.append(platform)
        platform.start()
        return platform

    def close(self) -> None:
        for platform in self.servers:
            with contextlib.suppress(Exception, Stop):  # a crashed one may fail to close: it is gone anyway
                platform.close()

    def counted_calls(self) -> dict[str, int]:
        """How many times any server defined, started or migrated a guest, by method and guest."""
        host_of = {driver.uri: name for name, driver in self.hosts.items()}
        return {
            f"{method} {subject} on {host_of.get(uri, uri)}": n
            for (uri, method, subject), n in sorted(self.calls.items())
            if method in COUNTED
        }


@contextmanager
def world(tmp_path: Path) -> Iterator[World]:
    """Three fake hosts on network 'lan' behind an in-memory HAProxy, on SQLite.

    SQLite only: the matrix is about where a run stops, which the backends do not change, and on
    PostgreSQL it would double a long list (the engine's own tests run on both)."""
    home = tmp_path / "home"
    dhcp = tmp_path / "dhcp"
    dhcp.mkdir(parents=True, exist_ok=True)
    settings = pool_settings(tmp_path, f"sqlite:///{tmp_path / 'flexvm.db'}", takeover_poll_seconds=0.05)
    assert settings.home == home
    made = World(settings, dhcp)
    try:
        yield made
    finally:
        made.close()


@dataclass(frozen=True)
class Prepared:
    """A world set up once, to be copied for each case: its files (database, home, DHCP entries)
    and what its fake hosts and HAProxy hold in memory. A copy costs a few milliseconds; setting
    a world up again, a few hundred (a schema migrated, hosts added, an image imported)."""

    directory: Path
    hosts: dict[str, tuple[str, FakeHost]]  # name -> (URI, state)
    haproxy: FakeHAProxy


def keep(made: World) -> Prepared:
    """What ``made`` holds now (its servers must have stopped: the database is copied as a file)."""
    hosts = {name: (driver.uri, copy.deepcopy(driver.host)) for name, driver in made.hosts.items()}
    return Prepared(made.settings.home.parent, hosts, copy.deepcopy(made.haproxy))


@contextmanager
def copy_of(prepared: Prepared, tmp_path: Path) -> Iterator[World]:
    """A world of its own, as ``prepared`` was: the same host URIs, now holding fresh copies."""
    shutil.copytree(prepared.directory, tmp_path, dirs_exist_ok=True)
    with world(tmp_path) as made:
        with sqlite3.connect(tmp_path / "flexvm.db") as db:  # the DHCP entries now live here
            db.execute("UPDATE networks SET dhcp_hosts_dir = ?", (str(made.dhcp_dir),))
        db.close()
        for name, (uri, host) in prepared.hosts.items():
            made.hosts[name] = FakeDriver.with_host(uri, copy.deepcopy(host))
        made.haproxy = copy.deepcopy(prepared.haproxy)
        yield made


def furnish(world: World, platform: Platform, small_disk: Path, host_mib: dict[str, int] | None = None) -> None:
    """The network, hosts a, b and c (8 GiB each unless ``host_mib`` says), and the image 'img'."""
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.10", "10.213.0.99", dhcp_hosts_dir=str(world.dhcp_dir))
    for n, name in enumerate(("a", "b", "c"), start=1):
        memory = (host_mib or {}).get(name, 8192)
        uri = fake_uri(memory_mib=memory)
        changes = HostChanges(network="lan", bridge="br-lan", fault_domain=f"fd{n}")
        run(platform, platform.hosts.add(HostRequest(name, uri, changes)))
        world.hosts[name] = FakeDriver.for_uri(uri)
    done = wait_done(platform, platform.images.import_image("img", small_disk, ready_marker="flexvm: ready").id)
    assert done.status.value == "succeeded", done.error


def fingerprint(world: World, platform: Platform) -> dict[str, Any]:
    """Everything an operation can leave behind, in a form two runs compare by."""
    vms = {
        vm.name: {
            "host": vm.host,
            "disk_host": vm.disk_host,
            "power": vm.power_state.value,
            "provisioning": vm.provisioning_state.value,
            "size": vm.size,
            "shape": (vm.vcpus, vm.memory_mib),
            "ceilings": (vm.max_size, vm.max_vcpus, vm.max_memory_mib),
            "moving_to": vm.moving_to,
            "busy": vm.active_operation_id is not None,
            "error": vm.error,
        }
        for vm in platform.vms.list()
    }
    names = {vm.id: vm.name for vm in platform.vms.list()}
    with platform.db.session() as session:
        rows = list(session.scalars(select(AddressRow)))
    addresses = sorted((names.get(r.vm_id, f"(no VM {r.vm_id})"), r.network, r.ip) for r in rows)
    holder_of_mac = {r.mac: names.get(r.vm_id, f"(no VM {r.vm_id})") for r in rows}
    dhcp = []
    for entry in world.dhcp_dir.iterdir():  # "MAC,IP": name it by the VM whose address it is
        mac, _, ip = entry.read_text().strip().partition(",")
        dhcp.append((holder_of_mac.get(mac, "(no address holds this MAC)"), ip))
    hosts: dict[str, Any] = {}
    for name in world.hosts:
        driver = world.hosts[name]
        detail = platform.hosts.detail(name)
        hosts[name] = {
            "state": detail.host.state.value,
            "guests": {
                g: {
                    "state": x.state.value,
                    "vcpus": (x.vcpus, x.spec.max_vcpus),
                    "memory": (x.memory_mib, x.plugged_mib, x.dimms, x.spec.max_memory_mib),
                    "disks": [d.volume for d in x.spec.disks],
                }
                for g, x in sorted(driver.host.guests.items())
            },
            "instance volumes": sorted(driver.host.instances),
            "claims": dataclasses.astuple(detail.allocated),
            "leftovers": sorted(detail.leftovers),
        }
    sets = {
        s.name: {
            "capacity": s.capacity,
            "replaced": s.replaced,
            "error": s.error,
            "instances": sorted(
                (i.instance.vm_name, i.instance.state.value) for i in platform.scale_sets.instances(s.name)
            ),
        }
        for s in platform.scale_sets.list()
    }
    return {
        "vms": vms,
        "hosts": hosts,
        "addresses": addresses,
        "dhcp entries": sorted(dhcp),
        "haproxy backends": sorted((b.name, b.address) for f in world.haproxy.config for b in f.backends),
        "haproxy draining": sorted(world.haproxy.draining),
        "scale sets": sets,
        "operations unfinished": sorted(
            f"{op.kind} {op.status.value}" for op in platform.runner.list() if not op.status.finished
        ),
    }


def differences(expected: dict[str, Any], got: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two fingerprints, one line per leaf: a readable assertion message."""
    lines: list[str] = []
    for key in sorted(set(expected) | set(got), key=str):
        left, right = expected.get(key, "(absent)"), got.get(key, "(absent)")
        if isinstance(left, dict) and isinstance(right, dict):
            lines += differences(left, right, f"{prefix}{key}/")
        elif left != right:
            lines.append(f"{prefix}{key}: without the kill {left!r}, after it {right!r}")
    return lines
