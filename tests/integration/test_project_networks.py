"""Projects' guests on one lab network, seen from inside the guests: each guest's /fetch endpoint
fetches another guest's page, which succeeds within a project and fails across projects, on one
host and across two, and again after a live migration. The filters are libvirt's own, put on each
NIC by the lab hosts' libvirtds; the root namespace (the lab's gateway) still reaches every guest.
A guest whose NIC has no filter (defined before isolation existed) gets it, live, from the next
server that sees its host."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import httpx
import libvirt
import pytest

from flexvm.drivers.libvirt.domain_xml import interface_xml, nic_filter
from flexvm.lab import Lab
from flexvm.model.guest import GuestNic
from flexvm.model.network import isolation_name
from flexvm.model.projects import key_of
from tests.helpers import FlexvmServer, unique, wait_for

FETCH_TIMEOUT = 10  # the guest gives up on a fetch after 3 s and says so


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlexvmServer]:
    server = FlexvmServer(
        tmp_path_factory.mktemp("project-networks"),
        {"FLEXVM_LIBVIRT_URI": "", "FLEXVM_HEALTH_SECONDS": "2", "FLEXVM_READY_TIMEOUT": "90"},
    )
    server.start()
    try:
        server.ok("lab", "up", "--hosts", "2", "--host-cpus", "2", "--host-memory", "2G")
        server.ok("image", "build", "tiny")
        yield server
    finally:
        server.cli("lab", "down", "--force")
        Lab(server.home / "lab").down()
        server.stop()


def address(server: FlexvmServer, project: str, name: str) -> str:
    vm = server.ok("vm", "show", name, "--project", project, "-o", "json").json()
    return str(vm["nics"][0]["ip"])


def host_uri(server: FlexvmServer, host: str) -> str:
    return str(server.ok("host", "show", host, "-o", "json").json()["uri"])


def fetch(http: httpx.Client, source: str, target: str) -> httpx.Response:
    """Ask the guest at ``source`` to fetch the page of the guest at ``target``."""
    return http.get(f"http://{source}/fetch", params={"url": f"http://{target}/"})


def test_guests_reach_their_own_project_and_never_another(pool: FlexvmServer) -> None:
    team_a, team_b = unique("team-a"), unique("team-b")
    for project in (team_a, team_b):
        pool.ok("project", "create", project)
    placed = {("a1", team_a): "lab1", ("a2", team_a): "lab2", ("b1", team_b): "lab2"}
    for (name, project), host in placed.items():
        pool.ok(
            "vm", "create", name, "--project", project, "--size", "Standard_B1ls", "--image", "tiny", "--host", host
        )
    a1, a2, b1 = address(pool, team_a, "a1"), address(pool, team_a, "a2"), address(pool, team_b, "b1")
    (share,) = pool.ok("project", "show", team_a, "-o", "json").json()["networks"]
    assert share["network"] == "lab" and share["addresses"] == 2
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(share["blocks"][0]) for ip in (a1, a2))
    assert ipaddress.ip_address(b1) not in ipaddress.ip_network(share["blocks"][0])

    with httpx.Client(trust_env=False, timeout=FETCH_TIMEOUT) as http:
        for ip, key in ((a1, key_of(team_a, "a1")), (a2, key_of(team_a, "a2")), (b1, key_of(team_b, "b1"))):
            page = wait_for(lambda ip=ip: _page(http, ip), 30, f"HTTP from {key} at {ip}")
            assert page.strip() == key, "the gateway reaches every project's guests"

        def reachability() -> dict[str, int]:
            return {
                "a1->a2 (two hosts)": fetch(http, a1, a2).status_code,
                "a2->a1 (two hosts)": fetch(http, a2, a1).status_code,
                "a1->b1 (other project)": fetch(http, a1, b1).status_code,
                "b1->a2 (other project, same host)": fetch(http, b1, a2).status_code,
                "a2->b1 (other project, same host)": fetch(http, a2, b1).status_code,
            }

        expected = {
            "a1->a2 (two hosts)": 200,
            "a2->a1 (two hosts)": 200,
            "a1->b1 (other project)": 502,
            "b1->a2 (other project, same host)": 502,
            "a2->b1 (other project, same host)": 502,
        }
        assert reachability() == expected
        within = fetch(http, a1, a2)
        assert within.text.strip() == key_of(team_a, "a2")
        across = fetch(http, a1, b1)
        assert "could not fetch" in across.text

        # Live, to the host where b1 and a2 run: the guest keeps its address and its filter.
        moved = pool.ok("vm", "migrate", "a1", "--project", team_a, "--to", "lab2").stdout
        assert "(live)" in moved
        assert address(pool, team_a, "a1") == a1
        assert reachability() == expected

        # The endpoint itself stays inside the lab: nothing beyond the guest's own network.
        outside = http.get(f"http://{a1}/fetch", params={"url": "http://192.0.2.1/"})
        assert outside.status_code == 403 and "outside this guest's network" in outside.text
        assert http.get(f"http://{a1}/fetch", params={"url": "file:///etc/passwd"}).status_code == 400

    # A guest defined before isolation existed: its NIC has no filter. The next server to see its
    # host puts the filter on, live: the guest keeps running (still its first boot).
    b1_key = key_of(team_b, "b1")
    conn = libvirt.open(host_uri(pool, "lab2"))
    try:
        dom = conn.lookupByName(b1_key)
        mac = pool.ok("vm", "show", "b1", "--project", team_b, "-o", "json").json()["nics"][0]["mac"]
        bare = interface_xml(GuestNic(mac, "bridge", "br0"))
        dom.updateDeviceFlags(bare, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert nic_filter(dom.XMLDesc(0), mac) is None
        pool.stop()
        pool.start()
        wait_for(lambda: nic_filter(dom.XMLDesc(0), mac) is not None, 30, "the server to put b1's filter back")
        assert nic_filter(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), mac) == isolation_name("lab", team_b)
    finally:
        conn.close()
    with httpx.Client(trust_env=False, timeout=FETCH_TIMEOUT) as http:
        assert "boots=1" in http.get(f"http://{b1}/info").text
        assert fetch(http, b1, a2).status_code == 502

    for (name, project), _host in placed.items():
        pool.ok("vm", "delete", name, "--project", project)
    for project in (team_a, team_b):
        pool.ok("project", "delete", project)


def _page(http: httpx.Client, ip: str) -> str | None:
    try:
        response = http.get(f"http://{ip}/")
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None
