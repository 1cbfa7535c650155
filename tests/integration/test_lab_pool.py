"""A pool of three lab hosts behind a real server: placement by pin, best fit and availability set,
checked against where the lab's libvirtds really run the guests; a host that dies and comes back;
and `lab down` leaving nothing behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import libvirt
import pytest

from flexvm.lab import Lab
from tests.helpers import FlexvmServer, unique, wait_for

HOSTS = ("lab1", "lab2", "lab3")


def guests_on(uri: str) -> set[str]:
    """The domains a lab host's own libvirtd runs (the truth placement is checked against)."""
    conn = libvirt.open(uri)
    try:
        return {dom.name() for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    finally:
        conn.close()


def lab_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "flexlab" in line or "flexvm-lab" in line]


def lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("flexvm-lab")]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlexvmServer]:
    """A server whose only hosts are three lab hosts, each advertising 2 CPUs and 2 GiB, checked every second."""
    server = FlexvmServer(
        tmp_path_factory.mktemp("lab-pool"),
        {
            "FLEXVM_LIBVIRT_URI": "",
            "FLEXVM_HEALTH_SECONDS": "1",
            "FLEXVM_HEALTH_TIMEOUT": "3",
            "FLEXVM_READY_TIMEOUT": "90",
        },
    )
    server.start()
    try:
        server.ok("lab", "up", "--hosts", "3", "--host-cpus", "2", "--host-memory", "2G")
        server.ok("image", "build", "tiny")
        yield server
    finally:
        server.cli("lab", "down", "--force")
        Lab(server.home / "lab").down()  # whatever the CLI could not do
        server.stop()


@pytest.fixture
def lab(pool: FlexvmServer) -> Lab:
    return Lab(pool.home / "lab")


def host_of(server: FlexvmServer, name: str) -> str:
    return str(server.ok("vm", "show", name, "-o", "json").json()["host"])


def uri(server: FlexvmServer, host: str) -> str:
    return str(server.ok("host", "show", host, "-o", "json").json()["uri"])


def test_lab_hosts_are_in_the_pool_with_their_advertised_capacity(pool: FlexvmServer) -> None:
    hosts = {h["name"]: h for h in pool.ok("host", "list", "-o", "json").json()}
    assert set(hosts) == set(HOSTS)
    for host in hosts.values():
        assert host["state"] == "up" and host["network"] == "lab" and host["bridge"] == "br0"
        assert (host["advertised_cpus"], host["advertised_memory_mib"]) == (2, 2048)
    uuids = set()
    for name in HOSTS:
        conn = libvirt.open(uri(pool, name))
        uuids.add(conn.getCapabilities().split("<uuid>")[1].split("</uuid>")[0])
        conn.close()
    assert len(uuids) == 3, "three libvirtds, three host identities"


def test_pin_best_fit_and_the_guest_answers_on_its_reserved_address(pool: FlexvmServer) -> None:
    pinned, packed = unique("pin"), unique("fit")
    pool.ok("vm", "create", pinned, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab3")
    assert pinned in guests_on(uri(pool, "lab3"))

    # Best fit packs: the next VM goes where memory is already used, not to an empty host.
    pool.ok("vm", "create", packed, "--size", "Standard_B1ls", "--image", "tiny")
    assert host_of(pool, packed) == "lab3"
    assert packed in guests_on(uri(pool, "lab3"))
    assert packed not in guests_on(uri(pool, "lab1")) | guests_on(uri(pool, "lab2"))

    # Its address is the one flexvm reserved, handed out by the lab's DHCP; HTTP answers there.
    vm = pool.ok("vm", "show", packed, "-o", "json").json()
    ip = vm["nics"][0]["ip"]
    assert ip is not None and ip.startswith("10.213.0.")
    ready = [line for line in pool.ok("vm", "console", packed).stdout.splitlines() if "flexvm: ready" in line]
    assert f"ip={ip}" in ready[-1]
    with httpx.Client(trust_env=False, timeout=5) as http:
        answer = wait_for(lambda: _get(http, f"http://{ip}/"), 30, f"HTTP from {packed} at {ip}")
    assert answer.strip() == packed

    # The third does not fit on lab3 (1.5 GiB usable, 1 GiB taken, a 1 GiB size): it goes elsewhere.
    third = unique("big")
    pool.ok("vm", "create", third, "--size", "Standard_B1s", "--image", "tiny")
    assert host_of(pool, third) in ("lab1", "lab2")

    # Nothing fits a size larger than any host: the error names every host and why.
    result = pool.cli("vm", "create", unique("huge"), "--size", "Standard_B2s", "--image", "tiny")
    assert result.returncode == 1
    for host in HOSTS:
        assert f"{host}: larger than this host can ever hold" in result.stderr
    for name in (pinned, packed, third):
        pool.ok("vm", "delete", name)


def _get(http: httpx.Client, url: str) -> str | None:
    try:
        response = http.get(url)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_an_availability_set_spreads_over_fault_domains(pool: FlexvmServer) -> None:
    spread = unique("as")
    pool.ok("availability-set", "create", spread, "--fault-domains", "3")
    names = [unique("member") for _ in range(3)]
    for name in names:
        pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--availability-set", spread)
    placed = {name: host_of(pool, name) for name in names}
    assert sorted(placed.values()) == sorted(HOSTS), placed
    for name, host in placed.items():
        assert name in guests_on(uri(pool, host))
    drawing = pool.ok("availability-set", "show", spread).stdout
    for host in HOSTS:
        assert f"fault domain {host} (1 VM)" in drawing
    # Capacity sees the three of them.
    report = pool.ok("capacity", "-o", "json").json()
    assert sum(h["memory_mib_allocated"] for h in report["hosts"]) == 3 * 512
    for name in names:
        pool.ok("vm", "delete", name)
    pool.ok("availability-set", "delete", spread)


def test_a_host_without_fencing_whose_libvirtd_dies_goes_down_and_comes_back(pool: FlexvmServer, lab: Lab) -> None:
    name = unique("hb")
    pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab2")
    # Without a fence agent (the lab's would power lab2 off: tests/integration/test_failover.py).
    pool.ok("host", "update", "lab2", "--fence-agent", "none")
    lab.stop_host("lab2")
    try:
        wait_for(
            lambda: pool.ok("host", "show", "lab2", "-o", "json").json()["state"] == "down",
            20,
            "lab2 to be marked down",
        )
        wait_for(
            lambda: pool.ok("vm", "show", name, "-o", "json").json()["power_state"] == "unknown",
            20,
            f"{name} to be marked unknown",
        )
        # A down host takes no new VM.
        result = pool.cli("vm", "create", unique("x"), "--size", "Standard_B1ls", "--image", "tiny", "--host", "lab2")
        assert result.returncode == 1 and "host is down" in result.stderr
    finally:
        lab.start_host("lab2")
    wait_for(lambda: pool.ok("host", "show", "lab2", "-o", "json").json()["state"] == "up", 30, "lab2 to come back")
    # The guest ran on without its libvirtd; the records say so again.
    wait_for(
        lambda: pool.ok("vm", "show", name, "-o", "json").json()["power_state"] == "running",
        30,
        f"{name} to be seen running again",
    )
    pool.ok("vm", "delete", name)


def test_lab_down_refuses_with_vms_then_leaves_nothing(pool: FlexvmServer) -> None:
    name = unique("last")
    pool.ok("vm", "create", name, "--size", "Standard_B1ls", "--image", "tiny")
    refused = pool.cli("lab", "down")
    assert refused.returncode == 1 and name in refused.stderr and "--force" in refused.stderr
    pool.ok("lab", "down", "--force")
    assert pool.ok("host", "list", "-o", "json").json() == []
    assert pool.ok("vm", "list", "-o", "json").json() == []
    assert lab_namespaces() == [] and lab_links() == []
    lab_root = pool.home / "lab"
    assert not lab_root.exists() or not any(lab_root.iterdir())
    with Path("/proc/self/mountinfo").open() as mounts:
        assert str(lab_root) not in mounts.read()
    # And up again, as often as one likes.
    pool.ok("lab", "up", "--hosts", "1")
    assert [h["name"] for h in pool.ok("host", "list", "-o", "json").json()] == ["lab1"]
    pool.ok("lab", "down")
    assert lab_namespaces() == []
