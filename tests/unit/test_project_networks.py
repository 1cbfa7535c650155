"""Projects' own networks on a shared one: address blocks per project, and the filter each host
applies to a project's NICs (libvirt's nwfilter; the fake driver keeps what it was given).

Pins: two projects' VMs get addresses from distinct aligned blocks; a project takes a new block
only when its own are used up, and a freed address is reused last; an address reserved before
blocks existed stays its project's (as a /32) and keeps its block from being handed out; a range
with no block left refuses naming the network and the project; every host of the network holds the
project's filter before a guest is defined there, and a migration's destination too; a host that
cannot take it fails the create, another that cannot only lags; a deleted project gives its blocks
back and its filters are removed; the filter XML lets a NIC send only from its own MAC and address
and passes IPv4 and ARP only within the project's blocks and outside the range.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from flexvm.compute.addressing import Choice, choose_address
from flexvm.compute.networks import NetworkService
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.drivers.libvirt.domain_xml import PoolPaths, build_domain_xml
from flexvm.drivers.libvirt.nwfilter_xml import GUEST_FILTER, filter_uuid, guest_filter_xml, project_filter_xml
from flexvm.errors import CapacityError
from flexvm.model.guest import GuestNic, GuestSpec, GuestState
from flexvm.model.host import Accelerator
from flexvm.model.network import Block, Isolation, Network, block_prefix, candidate_blocks, guest_space, isolation_name
from flexvm.model.projects import key_of
from flexvm.platform import Platform
from flexvm.store.repositories import NetworkRepo
from flexvm.store.tables import NetworkBlockRow
from tests.unit.pool_helpers import add_host, pool_settings, run


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def lan(platform: Platform, tmp_path: Path) -> str:
    """The lab's layout: 10.213.0.32-.239 for guests, thirteen blocks of 16."""
    (tmp_path / "dhcp").mkdir()
    platform.networks.create(
        "lan",
        "10.213.0.0/24",
        "10.213.0.32",
        "10.213.0.239",
        gateway="10.213.0.1",
        dhcp_hosts_dir=str(tmp_path / "dhcp"),
    )
    for project in ("team-a", "team-b"):
        platform.projects.create(project)
    return "lan"


def on_lan(platform: Platform, name: str, **room: int) -> FakeDriver:
    return add_host(platform, name, network="lan", bridge="br0", **room)


def isolation_of(platform: Platform, project: str) -> Isolation:
    with platform.db.session() as session:
        return NetworkService.isolation(session, "lan", project)


def create(platform: Platform, project: str, name: str, image: str, host: str | None = None) -> str:
    """Create a VM in ``project``; its address."""
    key = key_of(project, name)
    run(platform, platform.vms.create(key, "Standard_B1ls", image, host=host))
    return platform.vms.get(key).nics[0].ip or ""


def block_of(ip: str) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"{ip}/28", strict=False)


def test_two_projects_get_addresses_from_blocks_of_their_own(platform: Platform, image: str, lan: str) -> None:
    on_lan(platform, "h1")
    a1, b1, a2 = (create(platform, p, n, image) for p, n in (("team-a", "a1"), ("team-b", "b1"), ("team-a", "a2")))
    assert block_of(a1) == block_of(a2) != block_of(b1)
    with platform.db.session() as session:
        blocks = NetworkRepo(session).blocks("lan")
    assert blocks == {str(block_of(a1)): "team-a", str(block_of(b1)): "team-b"}
    assert platform.networks.get("lan").isolated
    assert platform.projects.show("team-a").networks == {"lan": (2, [str(block_of(a1))])}


def test_a_project_takes_a_new_block_only_when_its_own_are_used_up(platform: Platform, image: str, lan: str) -> None:
    on_lan(platform, "h1", cpus=32, memory_mib=64 * 1024, disk_gib=500)
    first = [create(platform, "team-a", f"w{i}", image) for i in range(16)]
    assert {block_of(ip) for ip in first} == {ipaddress.ip_network("10.213.0.32/28")}
    seventeenth = create(platform, "team-a", "w16", image)
    assert block_of(seventeenth) == ipaddress.ip_network("10.213.0.48/28")
    # A freed address comes back last: the next VM takes the new block's next address.
    run(platform, platform.vms.delete(key_of("team-a", "w0")))
    assert create(platform, "team-a", "w17", image) == "10.213.0.49"
    assert isolation_of(platform, "team-a").own == ("10.213.0.32/28", "10.213.0.48/28")


def test_an_address_from_before_blocks_stays_its_projects_and_holds_its_block(
    platform: Platform, image: str, lan: str
) -> None:
    on_lan(platform, "h1")
    old_ip = create(platform, "default", "old", image)
    with platform.db.session() as session:  # as migration 0009 leaves data from before: no block
        session.execute(delete(NetworkBlockRow))
    assert isolation_of(platform, "default").own == (f"{old_ip}/32",)
    fresh = create(platform, "team-a", "new", image)
    assert block_of(fresh) != block_of(old_ip), "a block holding another project's address is not handed out"


def test_no_block_left_refuses_naming_the_network_and_the_project(
    platform: Platform, image: str, tmp_path: Path
) -> None:
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.32", "10.213.0.95", gateway="10.213.0.1")
    for project in ("p1", "p2", "p3", "p4", "p5"):
        platform.projects.create(project)
    on_lan(platform, "h1")
    for project in ("p1", "p2", "p3", "p4"):
        create(platform, project, "vm", image)
    with pytest.raises(CapacityError) as caught:
        platform.vms.create(key_of("p5", "vm"), "Standard_B1ls", image)
    assert "'lan'" in caught.value.message and "'p5'" in caught.value.message
    assert caught.value.details["project"] == "p5"


def test_every_host_of_the_network_holds_the_filter_before_the_guest_is_defined(
    platform: Platform, image: str, lan: str
) -> None:
    h1, h2 = on_lan(platform, "h1"), on_lan(platform, "h2")
    ip = create(platform, "team-a", "web", image, host="h1")
    name = isolation_name("lan", "team-a")
    for fake in (h1, h2):
        assert fake.host.isolations[name].own == (str(block_of(ip)),)
        assert fake.host.isolations[name].guest_space == guest_space(platform.networks.get("lan"))
    (nic,) = h1.host.guests[key_of("team-a", "web")].spec.nics
    assert (nic.isolation, nic.ip, nic.source) == (name, ip, "br0")
    # A live migration takes the guest to a host that has it (the fake refuses one without, as libvirtd does).
    h2.host.isolations.clear()
    run(platform, platform.mover.migrate(key_of("team-a", "web"), "h2"))
    assert name in h2.host.isolations and key_of("team-a", "web") in h2.host.guests


def test_a_host_that_cannot_take_the_filter_fails_the_create_another_only_lags(
    platform: Platform, image: str, lan: str
) -> None:
    h1, h2 = on_lan(platform, "h1"), on_lan(platform, "h2")
    h2.fail_next("apply_isolation")
    create(platform, "team-a", "web", image, host="h1")  # h2 lags; it catches up when checked after an outage
    assert isolation_name("lan", "team-a") not in h2.host.isolations
    h1.fail_next("apply_isolation")
    done = run(
        platform, platform.vms.create(key_of("team-b", "db"), "Standard_B1ls", image, host="h1"), status="failed"
    )
    assert done.error is not None and "apply_isolation: injected failure" in done.error["message"]
    assert key_of("team-b", "db") not in h1.host.guests


def test_a_host_back_from_an_outage_catches_up(platform: Platform, image: str, lan: str) -> None:
    on_lan(platform, "h1")
    h2 = on_lan(platform, "h2")
    h2.host.reachable = False
    platform.health.check_all()
    create(platform, "team-a", "web", image, host="h1")
    assert h2.host.isolations == {}
    h2.host.reachable = True
    platform.health.check_all()
    assert isolation_name("lan", "team-a") in h2.host.isolations


def test_a_guest_defined_before_isolation_gets_its_filter_when_a_server_first_sees_its_host(
    platform: Platform, image: str, lan: str
) -> None:
    h1 = on_lan(platform, "h1")
    create(platform, "team-a", "old", image)
    guest = h1.host.guests[key_of("team-a", "old")]
    (nic,) = guest.spec.nics
    guest.spec = dataclasses.replace(guest.spec, nics=(dataclasses.replace(nic, isolation=None, ip=None),))
    platform.health._caught_up.clear()  # as a server started anew sees it
    platform.health.check_all()
    assert guest.spec.nics == (nic,)
    assert guest.state is GuestState.RUNNING
    platform.health.check_all()  # once per server: nothing more to do
    assert platform.hosts.isolation.retrofit(platform.hosts.get("h1")) == 0


def test_a_deleted_project_gives_its_blocks_back_and_its_filters_go(platform: Platform, image: str, lan: str) -> None:
    h1 = on_lan(platform, "h1")
    create(platform, "team-a", "web", image)
    run(platform, platform.vms.delete(key_of("team-a", "web")))
    platform.projects.delete("team-a")
    with platform.db.session() as session:
        assert NetworkRepo(session).blocks("lan") == {}
    assert isolation_name("lan", "team-a") not in h1.host.isolations


# --- the filters libvirt is given ---------------------------------------------------------


ISOLATION = Isolation("lan", "team-a", ("10.213.0.32/28",), ("10.213.0.32/27", "10.213.0.64/26"))


def rules(xml: str) -> list[tuple[str, str, int, str, dict[str, str]]]:
    root = ET.fromstring(xml)
    return [
        (r.get("action", ""), r.get("direction", ""), int(r.get("priority", "0")), r[0].tag, dict(r[0].attrib))
        for r in root.findall("rule")
    ]


def test_the_guest_filter_lets_a_nic_send_only_from_its_own_mac_and_address() -> None:
    root = ET.fromstring(guest_filter_xml())
    assert root.get("name") == GUEST_FILTER and root.findtext("uuid") == filter_uuid(GUEST_FILTER)
    found = rules(guest_filter_xml())
    assert ("drop", "out", -700, "mac", {"match": "no", "srcmacaddr": "$MAC"}) in found
    assert ("drop", "out", -698, "ip", {"match": "no", "srcipaddr": "$IP"}) in found
    assert ("drop", "out", -695, "arp", {"match": "no", "arpsrcipaddr": "$IP"}) in found
    # The DHCP request a guest sends before it has an address passes, before the address check.
    dhcp = next(r for r in found if r[4].get("srcipaddr") == "0.0.0.0")
    assert dhcp[0] == "accept" and dhcp[2] < -698 and dhcp[4]["dstportstart"] == "67"


def test_the_project_filter_passes_its_blocks_refuses_the_rest_of_the_range_and_drops_other_frames() -> None:
    xml = project_filter_xml(ISOLATION, "0f0e0d0c-0b0a-4908-8706-050403020100")
    root = ET.fromstring(xml)
    assert root.findtext("uuid") == "0f0e0d0c-0b0a-4908-8706-050403020100", "the host's UUID is kept"
    assert root.find("filterref").get("filter") == GUEST_FILTER  # type: ignore[union-attr]
    found = rules(xml)
    own = [r for r in found if r[0] == "accept" and "10.213.0.32" in r[4].values() and "28" in r[4].values()]
    assert {(r[1], r[3]) for r in own} == {("out", "ip"), ("in", "ip"), ("out", "arp"), ("in", "arp")}
    refused = [r for r in found if r[0] == "drop" and r[3] in ("ip", "arp") and "match" not in r[4]]
    assert {v for r in refused for k, v in r[4].items() if k.endswith("ipaddr")} == {"10.213.0.32", "10.213.0.64"}
    assert max(r[2] for r in own) < min(r[2] for r in refused)
    assert found[-1] == ("drop", "inout", 1000, "mac", {})  # IPv6 and everything else


def test_a_gateway_inside_the_range_stays_reachable_for_every_project(platform: Platform, image: str) -> None:
    platform.networks.create("wide", "10.0.0.0/24", "10.0.0.1", "10.0.0.255", gateway="10.0.0.1")
    with platform.db.session() as session:
        isolation = NetworkService.isolation(session, "wide", "team-x")
    assert isolation.shared == ("10.0.0.1/32", "10.0.0.255/32")  # the gateway and the broadcast address
    found = rules(project_filter_xml(isolation))
    gateway = [r for r in found if "10.0.0.1" in r[4].values() and r[0] == "accept"]
    assert len(gateway) == 4  # IPv4 and ARP, to and from: before the range's refusals, which name it too
    refused = [r for r in found if r[0] == "drop" and r[3] in ("ip", "arp") and "match" not in r[4]]
    assert refused and max(r[2] for r in gateway) < min(r[2] for r in refused)


def test_an_isolated_nic_names_its_filter_with_its_address_and_mac() -> None:
    nic = GuestNic("52:54:00:00:00:01", "bridge", "br0", "flexvm.lan.team-a", "10.213.0.33")
    spec = GuestSpec("team-a.web", "00000000-0000-4000-8000-000000000001", "x", 1, 256, Accelerator.TCG, (), (nic,))
    root = ET.fromstring(build_domain_xml(spec, PoolPaths(PurePosixPath("/i"), PurePosixPath("/v"))))
    filterref = root.find("devices/interface/filterref")
    assert filterref is not None and filterref.get("filter") == "flexvm.lan.team-a"
    assert {p.get("name"): p.get("value") for p in filterref.findall("parameter")} == {
        "IP": "10.213.0.33",
        "MAC": "52:54:00:00:00:01",
    }


def test_blocks_are_aligned_inside_the_range_and_smaller_on_a_small_range() -> None:
    lab = Network("lab", "10.213.0.0/24", "10.213.0.32", "10.213.0.239", datetime.now(UTC))
    assert block_prefix(lab) == 28 and len(candidate_blocks(lab)) == 13
    assert candidate_blocks(lab)[0] == "10.213.0.32/28" and candidate_blocks(lab)[-1] == "10.213.0.224/28"
    small = Network("s", "10.0.0.0/24", "10.0.0.10", "10.0.0.19", datetime.now(UTC))
    assert block_prefix(small) == 31
    assert all(ipaddress.ip_network(b).subnet_of(ipaddress.ip_network("10.0.0.0/24")) for b in candidate_blocks(small))
    assert guest_space(lab) == (
        "10.213.0.32/27",
        "10.213.0.64/26",
        "10.213.0.128/26",
        "10.213.0.192/27",
        "10.213.0.224/28",
    )


def test_with_no_block_left_another_projects_empty_block_changes_hands(platform: Platform, image: str) -> None:
    """Four blocks; p1 has churned through all of them and holds one VM now: p2 still gets one."""
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.32", "10.213.0.95", gateway="10.213.0.1")
    for project in ("p1", "p2"):
        platform.projects.create(project)
    on_lan(platform, "h1", cpus=64, memory_mib=64 * 1024, disk_gib=1000)
    for i in range(49):  # 3 blocks and one address of the fourth
        create(platform, "p1", f"vm{i}", image)
        if i < 48:
            run(platform, platform.vms.delete(key_of("p1", f"vm{i}")))
    with platform.db.session() as session:
        assert set(NetworkRepo(session).blocks("lan").values()) == {"p1"}
    ip = create(platform, "p2", "vm", image)
    assert block_of(ip) != block_of(platform.vms.get(key_of("p1", "vm48")).nics[0].ip or "")
    assert isolation_of(platform, "p2").own == (str(block_of(ip)),)


def test_the_choice_is_arithmetic_on_blocks_even_on_the_largest_range() -> None:
    """65536 addresses, 4096 blocks, 3000 of them someone's, an address reserved in each: the next
    project's first address comes from the first block nobody holds, without walking the range."""
    wide = Network("wide", "10.64.0.0/16", "10.64.0.0", "10.64.255.255", datetime.now(UTC), gateway="10.64.0.1")
    blocks = [Block(f"10.64.{i // 16}.{i % 16 * 16}/28", f"p{i}", None) for i in range(3000)]
    used = {
        b.cidr.split("/")[0].rsplit(".", 1)[0] + f".{int(b.cidr.split('/')[0].rsplit('.', 1)[1]) + 2}" for b in blocks
    }
    choice = choose_address(wide, "newcomer", blocks, used)
    assert choice == Choice("10.64.187.128/28", "10.64.187.128", "new")
    mine = [*blocks, Block("10.64.187.128/28", "newcomer", "10.64.187.128")]
    assert choose_address(wide, "newcomer", mine, used | {"10.64.187.128"}) == Choice(
        "10.64.187.128/28", "10.64.187.129"
    )


def test_a_network_whose_dhcp_is_not_flexvms_is_not_isolated_and_says_so(
    platform: Platform, image: str, api: TestClient
) -> None:
    """Its guests may get other addresses than flexvm reserved: a filter naming the reserved one
    would cut them off, so they carry none."""
    platform.networks.create("outside", "10.213.0.0/24", "10.213.0.32", "10.213.0.239", gateway="10.213.0.1")
    platform.projects.create("team-a")
    fake = add_host(platform, "h1", network="outside", bridge="br0")
    create(platform, "team-a", "web", image)
    (nic,) = fake.host.guests[key_of("team-a", "web")].spec.nics
    assert (nic.source, nic.isolation) == ("br0", None)
    assert fake.host.isolations == {}
    assert api.get("/v1/networks/outside").json()["isolated"] is False
