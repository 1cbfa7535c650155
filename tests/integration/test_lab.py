"""The lab for real: namespaces, a libvirtd per host, DHCP on the lab switch, a guest on it.

Traffic goes only to addresses inside the lab's namespaces, and only after checking the root
namespace routes them through the lab link (``netns.route_device``), never the machine's own
network. One lab serves the module; its fixture always calls ``down``.

Run with ``-s`` to see the figures (lab up/down times, guest boot-to-ready, HTTP round trip).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from flexvm import programs
from flexvm.drivers.libvirt.driver import LibvirtDriver
from flexvm.errors import Conflict, FlexvmError, InvalidInput
from flexvm.images.tiny import TinyImage, build_tiny_image
from flexvm.lab import Lab, LabSpec, LabState, processes
from flexvm.lab import netns as lab_netns
from flexvm.lab.config import reservation_line
from flexvm.lab.mountns import mounts_under
from flexvm.lab.plan import GATEWAY_LINK, check_no_overlap
from flexvm.model.guest import BootKernel, GuestDisk, GuestNic, GuestSpec
from flexvm.model.host import Accelerator
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

libvirt = pytest.importorskip("libvirt")
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

BOOT_DEADLINE = 120.0  # TCG on a busy 2-core machine; typical: ~4 s
READY = re.compile(r"flexvm: ready(?P<rest>[^\r\n]*)")
FIGURES: dict[str, str] = {}


def figure(name: str, value: str, record: Callable[[str, object], None] | None = None) -> None:
    FIGURES[name] = value
    print(f"\n[lab figure] {name}: {value}")
    if record is not None:
        record(name, value)


def via_lab(address: str) -> str:
    """Refuse to talk to ``address`` unless the root namespace sends it into the lab."""
    device = lab_netns.route_device(address)
    assert device == GATEWAY_LINK, f"{address} would leave through {device}, not the lab link; not sending"
    return address


def open_host(uri: str):  # noqa: ANN201 - a libvirt connection
    via_lab(uri.split("//", 1)[1].split("/", 1)[0])
    return libvirt.open(uri)


def host_uuid(uri: str) -> str:
    conn = libvirt.open(uri) if uri.startswith("qemu:///") else open_host(uri)
    try:
        caps = conn.getCapabilities()
    finally:
        conn.close()
    found = re.search(r"<host>\s*<uuid>([^<]+)</uuid>", caps)
    assert found, caps[:500]
    return found[1]


def system_libvirtd_pid() -> int | None:
    return processes.read_pid_file(Path("/run/libvirtd.pid"))


def lab_leftovers(root: Path) -> list[str]:
    """Anything of a lab still on the machine, described; empty when all is gone."""
    left = [f"netns {n}" for n in lab_netns.names("flexvm-lab")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if "flexlab" in line]
    left += [f"mount {m}" for m in mounts_under(root)]
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    left += [f"route {line}" for line in routes.splitlines() if "flexlab" in line or "metric 4242" in line]
    if root.exists():
        left += [f"file {p}" for p in root.iterdir()]
    return left


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab-home") / "lab"


@pytest.fixture(scope="module")
def lab(lab_root: Path) -> Iterator[Lab]:
    the_lab = Lab(lab_root)
    try:
        yield the_lab
    finally:
        the_lab.down()
        assert lab_leftovers(lab_root) == []


@pytest.fixture(scope="module")
def lab_state(lab: Lab, record_testsuite_property: Callable[[str, object], None]) -> LabState:
    started = time.monotonic()
    state = lab.up(LabSpec(hosts=2))
    figure("lab up, 2 hosts (s)", f"{time.monotonic() - started:.2f}", record_testsuite_property)
    return state


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> TinyImage:
    return build_tiny_image(tmp_path_factory.mktemp("lab-tiny"))


# --------------------------------------------------------------------------- tests
# Order matters: the lab is made by the first test that needs it and taken down by the last.


def test_subnets_overlapping_the_machine_are_refused(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    for subnet in ("192.0.2.0/24", "192.0.2.128/25", "192.0.0.0/16", "127.0.0.0/24", "127.0.0.0/8"):
        with pytest.raises(InvalidInput) as caught:
            lab.up(LabSpec(hosts=1, subnet=subnet))
        assert caught.value.field == "subnet", subnet
    # The machine's own networks are read for real, and a lab network over them is refused.
    machine = lab_netns.machine_networks()
    seen = {str(net) for net, _ in machine}
    assert {"192.0.2.0/24", "127.0.0.0/8"} <= seen
    for subnet in ("192.0.2.0/24", "127.0.0.0/16"):
        with pytest.raises(InvalidInput):
            check_no_overlap(ipaddress.IPv4Network(subnet), machine)
    assert not (tmp_path / "lab").exists()
    assert lab_leftovers(tmp_path / "lab") == []


def lab_daemons_outside_the_root_namespace() -> set[int]:
    """PIDs of dnsmasq, libvirtd and virtlogd processes in any network namespace but this one's:
    a lab's, or what is left of one whose name was deleted under it."""
    ours = os.stat("/proc/self/ns/net").st_ino
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            net = os.stat(entry / "ns" / "net").st_ino
        except OSError:  # gone meanwhile
            continue
        if comm in ("dnsmasq", "libvirtd", "virtlogd") and net != ours and processes.running(int(entry.name)):
            found.add(int(entry.name))
    return found


def test_an_up_failing_midway_removes_everything_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real `up` whose second host's libvirtd will not start, after the switch, dnsmasq and
    all of lab1 (namespaces, veths, mounts, both daemons) are made: nothing is left of any of it."""
    real_libvirtd = programs.find("libvirtd")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    wrapper = fake_bin / "libvirtd"
    # Found before the real one (PATH comes first); run inside the host, whose name it reads.
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$(uname -n)" = lab2 ]; then echo "injected: this libvirtd will not start" >&2; exit 1; fi\n'
        f'exec {real_libvirtd} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    assert programs.find("libvirtd") == str(wrapper)
    before = lab_daemons_outside_the_root_namespace()
    root = tmp_path / "lab"
    lab = Lab(root)
    started = time.monotonic()
    with pytest.raises(FlexvmError, match="libvirtd of lab2 failed to start.*injected: this libvirtd will not start"):
        lab.up(LabSpec(hosts=2))
    figure("lab up failing at lab2's libvirtd, made and removed (s)", f"{time.monotonic() - started:.2f}")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "flexvm-lab" not in listed, listed
    assert lab_leftovers(root) == []
    assert lab.status() is None
    assert lab_daemons_outside_the_root_namespace() - before == set()


def test_what_was_there_before_a_failed_up_stays(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    planted = root / "lab2"
    planted.write_text("in the way: lab2's private directory cannot be made\n")
    lab = Lab(root)
    with pytest.raises(FlexvmError, match="lab2"):
        lab.up(LabSpec(hosts=2))  # fails after the switch and all of lab1 were made
    assert lab_leftovers(root) == [f"file {planted}"]  # not up's to remove
    assert lab.status() is None


def test_two_hosts_up_each_its_own_libvirtd(lab_state: LabState, lab: Lab) -> None:
    state = lab.status()
    assert state is not None and state.phase == "up"
    assert [h.name for h in state.hosts] == ["lab1", "lab2"]
    assert all(h.alive for h in state.hosts), state.hosts
    assert state.gateway == "10.213.0.1"
    uuids = {}
    for host in state.hosts:
        assert host.uri == f"qemu+tcp://{host.address}/system"
        assert set(host.pids) == {"libvirtd", "virtlogd"}
        conn = open_host(host.uri)
        try:
            assert conn.getHostname() == host.name
            assert conn.getLibVersion() >= 9_000_000
        finally:
            conn.close()
        uuids[host.name] = host_uuid(host.uri)
    assert uuids["lab1"] != uuids["lab2"]
    assert host_uuid("qemu:///system") not in uuids.values()
    assert system_libvirtd_pid() not in {h.pids["libvirtd"] for h in state.hosts}


def test_guest_on_lab1_gets_its_reserved_address_and_serves_http(
    lab_state: LabState, tiny_image: TinyImage, record_property: Callable[[str, object], None]
) -> None:
    host = lab_state.hosts[0]
    driver = LibvirtDriver(host.uri)
    via_lab(host.address)
    name = f"labvm-{uuid.uuid4().hex[:6]}"
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
    address = lab_state.dhcp_range[0]
    (lab_state.dhcp_hosts_dir / f"{name}.conf").write_text(reservation_line(mac, address))
    try:
        for volume, source in (
            ("tiny.kernel", tiny_image.kernel),
            ("tiny.initrd", tiny_image.initrd),
            ("tiny.qcow2", tiny_image.disk),
        ):
            driver.upload_image_volume(volume, source)
        driver.create_overlay(f"{name}.qcow2", "tiny.qcow2", "qcow2", 128 * 1024 * 1024)
        spec = GuestSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            vm_id=name,
            vcpus=1,
            memory_mib=256,
            accelerator=Accelerator.TCG,
            disks=(GuestDisk(f"{name}.qcow2"),),
            nics=(GuestNic(mac, "bridge", host.bridge),),
            kernel=BootKernel(
                "tiny.kernel", "tiny.initrd", f"{tiny_image.cmdline} flexvm.name={name} flexvm.dhcp_wait=60"
            ),
            console_log=f"{name}.console.log",
        )
        driver.define(spec)
        started = time.monotonic()
        driver.start(name)

        def ready() -> dict[str, str] | None:
            found = READY.search(driver.console_read(f"{name}.console.log").decode(errors="replace"))
            return dict(t.split("=", 1) for t in found["rest"].split() if "=" in t) if found else None

        fields = wait_for(ready, BOOT_DEADLINE, f"{name}'s readiness line", interval=0.1)
        figure("guest boot to ready on a lab host (s)", f"{time.monotonic() - started:.2f}", record_property)
        assert fields["name"] == name
        assert fields["ip"] == address

        url = f"http://{via_lab(address)}/"

        def get() -> httpx.Response | None:
            try:
                return httpx.get(url, timeout=5, trust_env=False)
            except httpx.HTTPError:
                return None

        first = wait_for(get, 30, f"an HTTP answer from {address}", interval=0.2)
        assert first.status_code == 200
        assert first.text.strip() == name
        times = []
        with httpx.Client(timeout=5, trust_env=False) as client:
            for _ in range(20):
                t0 = time.monotonic()
                response = client.get(url, headers={"Connection": "close"})
                times.append(time.monotonic() - t0)
                assert response.text.strip() == name
        figure(
            "HTTP GET / round trip, root ns -> lab guest (ms, median of 20)", f"{statistics.median(times) * 1000:.1f}"
        )

        # The machine's own libvirtd knows nothing of it.
        listed = subprocess.run(
            ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert name not in listed
        assert name in {g.name for g in driver.list_guests()}
    finally:
        driver.close()
    # The guest is left running on purpose: `down` must end it.


def test_stop_and_start_a_host(lab_state: LabState, lab: Lab) -> None:
    lab2 = lab_state.hosts[1]
    open_host(lab2.uri).close()
    lab.stop_host("lab2")

    def refused() -> bool:
        try:
            open_host(lab2.uri).close()
        except libvirt.libvirtError:
            return True
        return False

    wait_for(refused, 15, "lab2's libvirtd to stop answering")
    state = lab.status()
    assert state is not None
    assert [h.alive for h in state.hosts] == [True, False]
    assert "libvirtd" not in state.hosts[1].pids and "virtlogd" in state.hosts[1].pids

    started = time.monotonic()
    lab.start_host("lab2")
    conn = wait_for(lambda: not refused() and open_host(lab2.uri), 30, "lab2's libvirtd to answer again")
    conn.close()
    figure("start_host, to answering (s)", f"{time.monotonic() - started:.2f}")
    state = lab.status()
    assert state is not None and all(h.alive for h in state.hosts)
    lab.start_host("lab2")  # already running: nothing to do


def test_up_twice_conflicts_and_down_removes_everything(
    lab_state: LabState, lab: Lab, lab_root: Path, record_testsuite_property: Callable[[str, object], None]
) -> None:
    with pytest.raises(Conflict) as caught:
        lab.up(LabSpec(hosts=2))
    assert "lab down" in caught.value.message and "lab status" in caught.value.message

    state = lab.status()
    assert state is not None
    pids = [state.dnsmasq_pid, *(p for h in state.hosts for p in h.pids.values())]
    qemu = [p for h in state.hosts for p in processes.qemu_pids(h.root / "run" / "qemu")]
    assert qemu, "the guest of the HTTP test should still be running"
    assert all(processes.running(p) for p in pids + qemu)
    system_pid = system_libvirtd_pid()
    # One daemon dead before down: down must cope.
    processes.kill([state.hosts[1].pids["virtlogd"]])

    started = time.monotonic()
    lab.down()
    figure("lab down, 2 hosts + 1 guest (s)", f"{time.monotonic() - started:.2f}", record_testsuite_property)
    assert lab_leftovers(lab_root) == []
    assert not lab_root.exists() or not any(lab_root.iterdir())
    assert lab.status() is None
    alive = processes.wait_gone(pids + qemu, 10)
    assert alive == []
    assert lab_netns.route_device(state.hosts[0].address) != GATEWAY_LINK
    # The machine's libvirtd is untouched and answers.
    assert system_libvirtd_pid() == system_pid
    conn = libvirt.open("qemu:///system")
    try:
        assert conn.getLibVersion() >= 9_000_000
    finally:
        conn.close()
    lab.down()  # nothing up: a no-op

    # And again, with three hosts.
    started = time.monotonic()
    again = lab.up(LabSpec(hosts=3))
    figure("lab up, 3 hosts (s)", f"{time.monotonic() - started:.2f}", record_testsuite_property)
    assert [h.alive for h in again.hosts] == [True, True, True]
    assert len({host_uuid(h.uri) for h in again.hosts}) == 3
    started = time.monotonic()
    lab.down()
    figure("lab down, 3 hosts (s)", f"{time.monotonic() - started:.2f}", record_testsuite_property)
    assert lab_leftovers(lab_root) == []


def test_down_after_an_interrupted_up(lab: Lab, lab_root: Path) -> None:
    """`lab up` killed half-way (as by Ctrl-C twice or a crash) leaves a record down can use."""
    assert lab.status() is None
    script = (
        "import sys; from pathlib import Path; from flexvm.lab import Lab, LabSpec; "
        "Lab(Path(sys.argv[1])).up(LabSpec(hosts=8))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(lab_root)], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (lab_root / "lab2" / "run" / "libvirtd.pid").exists(), 60, "up to reach lab2")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    state = lab.status()
    assert state is not None and state.phase == "starting"
    with pytest.raises(Conflict):
        lab.up(LabSpec(hosts=1))
    lab.down()
    assert lab_leftovers(lab_root) == []
    print("\n[lab figures]\n" + "\n".join(f"  {k}: {v}" for k, v in FIGURES.items()))
