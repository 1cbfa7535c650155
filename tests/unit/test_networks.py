"""Networks and address reservations: validation, one address per NIC reserved with the placement,
its 'MAC,IP' file for the DHCP server, and nothing left behind when a create fails or a VM goes.

Pins: bad subnet, range and directory refused naming the field; a VM on a host with a network
gets a distinct address in the range, a file flexvm-<mac with dashes> holding 'MAC,IP', a NIC on
the host's bridge; delete and a failed create release both; a full range refuses the next create
naming the network with nothing left; concurrent creates never share an address; a network in use
cannot be deleted.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from threading import Barrier

import pytest

from flexvm.compute import guest_boot
from flexvm.compute.hosts import HostChanges
from flexvm.compute.networks import reservation_file
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import AlreadyExists, CapacityError, Conflict, InvalidInput, NotFound
from flexvm.model.network import Network
from flexvm.model.operation import Operation
from flexvm.platform import Platform
from flexvm.store.repositories import NetworkRepo
from tests.unit.pool_helpers import add_host, pool_settings, run


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def dhcp_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dhcp-hosts"
    path.mkdir()
    return path


def make_network(platform: Platform, dhcp_dir: Path, start: str = "10.213.0.10", end: str = "10.213.0.19") -> str:
    platform.networks.create("lan", "10.213.0.0/24", start, end, gateway="10.213.0.1", dhcp_hosts_dir=str(dhcp_dir))
    return "lan"


def networked_host(platform: Platform, name: str = "h1", **kwargs: object) -> FakeDriver:
    return add_host(platform, name, network="lan", bridge="br-lan", **kwargs)  # type: ignore[arg-type]


def files_in(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def addresses_held(platform: Platform) -> list[str]:
    with platform.db.session() as session:
        return sorted(NetworkRepo(session).used_addresses("lan"))


def reservation_of(platform: Platform, vm_name: str) -> tuple[str, str, str]:
    """(network, ip, mac) the VM holds in the addresses table: the authority on who has what."""
    vm = platform.vms.get(vm_name)
    with platform.db.session() as session:
        (held,) = NetworkRepo(session).addresses_of(vm.id)
    return held


# --- validation ------------------------------------------------------------------------------


BAD_NETWORKS = [
    ("10.0.0.0/33", "10.0.0.10", "10.0.0.20", None, "subnet"),
    ("10.0.0.1/24", "10.0.0.10", "10.0.0.20", None, "subnet"),  # host bits set
    ("banana", "10.0.0.10", "10.0.0.20", None, "subnet"),
    ("10.0.0.0/24", "10.0.1.10", "10.0.0.20", None, "range_start"),
    ("10.0.0.0/24", "10.0.0.10", "10.0.1.20", None, "range_end"),
    ("10.0.0.0/24", "not-an-ip", "10.0.0.20", None, "range_start"),
    ("10.0.0.0/24", "fd00::1", "10.0.0.20", None, "range_start"),
    ("10.0.0.0/24", "10.0.0.20", "10.0.0.10", None, "range_end"),
    ("10.0.0.0/24", "10.0.0.10", "10.0.0.20", "relative/dir", "dhcp_hosts_dir"),
]


@pytest.mark.parametrize(("subnet", "start", "end", "dhcp", "field"), BAD_NETWORKS)
def test_bad_networks_are_refused_naming_the_field(
    subnet: str, start: str, end: str, dhcp: str | None, field: str
) -> None:
    network = Network("lan", subnet, start, end, datetime.now(UTC), None, dhcp)
    with pytest.raises(InvalidInput) as caught:
        network.check()
    assert caught.value.field == field


def test_a_bad_network_is_not_stored(platform: Platform) -> None:
    for subnet, start, end, dhcp, field in BAD_NETWORKS:
        with pytest.raises(InvalidInput) as caught:
            platform.networks.create("lan", subnet, start, end, dhcp_hosts_dir=dhcp)
        assert caught.value.field == field
    with pytest.raises(InvalidInput) as caught:
        platform.networks.create("lan/1", "10.0.0.0/24", "10.0.0.10", "10.0.0.20")
    assert caught.value.field == "name"
    assert platform.networks.list() == []


def test_a_gateway_that_is_not_an_address_is_refused_naming_gateway(platform: Platform) -> None:
    """Every other field is checked; a gateway of 'banana' must not be stored either."""
    with pytest.raises(InvalidInput) as caught:
        platform.networks.create("lan", "10.0.0.0/24", "10.0.0.10", "10.0.0.20", gateway="banana")
    assert caught.value.field == "gateway"
    assert platform.networks.list() == []


def test_the_gateway_address_is_never_handed_to_a_vm(platform: Platform, image: str, dhcp_dir: Path) -> None:
    """A range that includes the gateway is either refused or the gateway is skipped."""
    try:
        platform.networks.create(
            "lan", "10.213.0.0/24", "10.213.0.1", "10.213.0.5", gateway="10.213.0.1", dhcp_hosts_dir=str(dhcp_dir)
        )
    except InvalidInput as err:
        assert err.field in ("gateway", "range_start")
        return
    networked_host(platform)
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    assert reservation_of(platform, "web1")[1] != "10.213.0.1"


def test_the_subnets_own_network_and_broadcast_addresses_are_never_handed_out(
    platform: Platform, image: str, dhcp_dir: Path
) -> None:
    """10.213.0.0 and 10.213.0.255 are not host addresses in a /24: a range that covers them is
    either refused or they are skipped."""
    try:
        platform.networks.create("lan", "10.213.0.0/24", "10.213.0.0", "10.213.0.255", dhcp_hosts_dir=str(dhcp_dir))
    except InvalidInput as err:
        assert err.field in ("range_start", "range_end")
        return
    networked_host(platform)
    for name in ("web1", "web2"):
        run(platform, platform.vms.create(name, "Standard_B1ls", image))
    assert not {"10.213.0.0", "10.213.0.255"} & set(addresses_held(platform))


def test_two_vms_on_one_network_never_share_a_mac(
    platform: Platform, image: str, dhcp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MACs are 24 bits of a hash of the VM's id, so two VMs can draw the same one (about 3% among
    1,000 VMs); forced here. Then one guest's reservation file is the other's, and deleting
    either VM takes away the survivor's reservation. A taken MAC must not be handed out again."""
    monkeypatch.setattr(guest_boot, "mac_for", lambda vm_id, index=0: "52:54:00:aa:bb:cc")
    make_network(platform, dhcp_dir)
    networked_host(platform)
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    run(platform, platform.vms.create("web2", "Standard_B1ls", image))
    run(platform, platform.vms.delete("web1"))
    _network, ip, mac = reservation_of(platform, "web2")
    assert files_in(dhcp_dir) == {"flexvm-" + mac.replace(":", "-"): f"{mac},{ip}\n"}


def test_a_network_is_created_listed_and_shown(platform: Platform, dhcp_dir: Path) -> None:
    make_network(platform, dhcp_dir)
    network = platform.networks.get("lan")
    assert (network.subnet, network.range_start, network.range_end) == ("10.213.0.0/24", "10.213.0.10", "10.213.0.19")
    assert (network.gateway, network.dhcp_hosts_dir) == ("10.213.0.1", str(dhcp_dir))
    assert len(list(network.addresses())) == 10
    assert [n.name for n in platform.networks.list()] == ["lan"]
    with pytest.raises(AlreadyExists):
        make_network(platform, dhcp_dir)
    with pytest.raises(NotFound):
        platform.networks.get("wan")


# --- addresses ---------------------------------------------------------------------------------


def test_a_vm_gets_a_reserved_address_and_its_dhcp_file(platform: Platform, image: str, dhcp_dir: Path) -> None:
    make_network(platform, dhcp_dir)
    fake = networked_host(platform)
    operation = platform.vms.create("web1", "Standard_B1ls", image)
    (nic,) = platform.vms.get("web1").nics  # reserved with the placement, before any work runs
    assert nic.network == "lan" and nic.ip is not None
    assert ipaddress.ip_address("10.213.0.10") <= ipaddress.ip_address(nic.ip) <= ipaddress.ip_address("10.213.0.19")
    run(platform, operation)
    assert reservation_of(platform, "web1") == ("lan", nic.ip, nic.mac)
    name = "flexvm-" + nic.mac.replace(":", "-")
    assert files_in(dhcp_dir) == {name: f"{nic.mac},{nic.ip}\n"}
    assert reservation_file(str(dhcp_dir), nic.mac) == dhcp_dir / name
    assert addresses_held(platform) == [nic.ip]
    (guest_nic,) = fake.host.guests["web1"].spec.nics
    assert (guest_nic.mac, guest_nic.kind, guest_nic.source) == (nic.mac, "bridge", "br-lan")


def test_a_vm_keeps_its_reserved_address_in_its_record_after_it_boots(
    platform: Platform, image: str, dhcp_dir: Path
) -> None:
    """The reservation is flexvm's to give: a guest that has no lease yet when it reports ready
    (the fake and the tiny image say ip=none) must not erase the address from the VM's NIC."""
    make_network(platform, dhcp_dir)
    networked_host(platform)
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    _network, ip, _mac = reservation_of(platform, "web1")
    assert platform.vms.get("web1").nics[0].ip == ip


def test_delete_releases_the_address_and_removes_the_file_and_reuses_it_last(
    platform: Platform, image: str, dhcp_dir: Path
) -> None:
    make_network(platform, dhcp_dir)
    networked_host(platform)
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    run(platform, platform.vms.create("web2", "Standard_B1ls", image))
    _network, freed, _mac = reservation_of(platform, "web1")
    _network, ip, mac = reservation_of(platform, "web2")
    assert len(files_in(dhcp_dir)) == 2
    run(platform, platform.vms.delete("web1"))
    assert files_in(dhcp_dir) == {"flexvm-" + mac.replace(":", "-"): f"{mac},{ip}\n"}
    assert addresses_held(platform) == [ip]
    # Handed out round the range: a freed address comes back last (a DHCP server may still hold
    # its lease for the old MAC), so web3 gets the next new one.
    run(platform, platform.vms.create("web3", "Standard_B1ls", image))
    third = reservation_of(platform, "web3")[1]
    assert third not in (freed, ip)
    assert ipaddress.ip_address(third) == ipaddress.ip_address(ip) + 1


def test_a_failed_create_leaves_no_address_and_no_file(platform: Platform, image: str, dhcp_dir: Path) -> None:
    make_network(platform, dhcp_dir)
    fake = networked_host(platform)
    for step in ("create_overlay", "define", "start"):
        fake.fail_next(step)
        done = run(platform, platform.vms.create("web1", "Standard_B1ls", image), status="failed")
        assert done.error is not None and f"{step}: injected failure" in done.error["message"]
        assert platform.vms.list() == []
        assert addresses_held(platform) == []
        assert files_in(dhcp_dir) == {}
        assert fake.host.guests == {}


def test_a_full_range_refuses_the_next_create_naming_the_network(
    platform: Platform, image: str, dhcp_dir: Path
) -> None:
    make_network(platform, dhcp_dir, "10.213.0.10", "10.213.0.11")
    networked_host(platform)
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    run(platform, platform.vms.create("web2", "Standard_B1ls", image))
    before = files_in(dhcp_dir)
    with pytest.raises(CapacityError) as caught:
        platform.vms.create("web3", "Standard_B1ls", image)
    assert "'lan'" in caught.value.message and "no free address" in caught.value.message
    assert "10.213.0.10-10.213.0.11" in caught.value.message
    assert sorted(vm.name for vm in platform.vms.list()) == ["web1", "web2"]
    assert addresses_held(platform) == ["10.213.0.10", "10.213.0.11"]
    assert files_in(dhcp_dir) == before
    assert [op.target_name for op in platform.runner.list() if op.kind == "vm.create"].count("web3") == 0


def test_concurrent_creates_never_get_the_same_address(platform: Platform, image: str, dhcp_dir: Path) -> None:
    make_network(platform, dhcp_dir, "10.213.0.10", "10.213.0.17")  # 8 addresses for 12 attempts
    networked_host(platform, "h1")
    networked_host(platform, "h2")
    names = [f"vm{i}" for i in range(12)]
    gate = Barrier(len(names))

    def attempt(name: str) -> Operation | Exception:
        gate.wait(timeout=30)
        try:
            return platform.vms.create(name, "Standard_B1ls", image)
        except Exception as err:  # checked below
            return err

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        outcomes = list(pool.map(attempt, names))
    accepted = [o for o in outcomes if isinstance(o, Operation)]
    assert len(accepted) == 8
    assert all(isinstance(o, CapacityError) for o in outcomes if not isinstance(o, Operation)), outcomes
    for operation in accepted:
        run(platform, operation, timeout=30)
    held = {vm.name: reservation_of(platform, vm.name) for vm in platform.vms.list()}
    ips = [ip for _network, ip, _mac in held.values()]
    assert len(set(ips)) == len(ips) == 8
    assert sorted(ips, key=ipaddress.ip_address) == [f"10.213.0.{n}" for n in range(10, 18)]
    assert files_in(dhcp_dir) == {"flexvm-" + mac.replace(":", "-"): f"{mac},{ip}\n" for _n, ip, mac in held.values()}


# --- delete ------------------------------------------------------------------------------------


def test_a_network_in_use_by_a_host_or_a_vm_cannot_be_deleted(platform: Platform, image: str, dhcp_dir: Path) -> None:
    make_network(platform, dhcp_dir)
    networked_host(platform)
    with pytest.raises(Conflict) as caught:
        platform.networks.delete("lan")
    assert caught.value.details == {"hosts": ["h1"]}
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    run(platform, platform.vms.delete("web1"))
    platform.hosts.remove("h1")
    platform.networks.delete("lan")
    assert platform.networks.list() == []
    with pytest.raises(NotFound):
        platform.networks.delete("lan")


def test_a_host_can_be_moved_onto_a_network_by_update(platform: Platform, image: str, dhcp_dir: Path) -> None:
    make_network(platform, dhcp_dir)
    add_host(platform, "h1")
    run(platform, platform.vms.create("web1", "Standard_B1ls", image))
    (nic,) = platform.vms.get("web1").nics
    assert (nic.network, nic.ip) == ("user", None)  # no network: QEMU's user network, no address
    with pytest.raises(NotFound):
        platform.hosts.update("h1", HostChanges(network="wan", bridge="br0"))
    platform.hosts.update("h1", HostChanges(network="lan", bridge="br-lan"))
    run(platform, platform.vms.create("web2", "Standard_B1ls", image))
    assert reservation_of(platform, "web2")[0] == "lan"
    assert len(files_in(dhcp_dir)) == 1
