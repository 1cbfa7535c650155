"""A host that dies while a VM is being created on it, and the health checks that notice hosts
going and coming back.

Pins: an unpinned create whose chosen host stops answering (at any step before the guest runs)
moves to another host and succeeds, naming the dead host in failed_over_from, with what it left
on the dead host recorded as leftovers; when that host answers again, check_all() marks it up and
removes them. A pinned create (or one with nowhere else to go) fails cleanly: no VM row, no claim,
no address, leftovers recorded. check_all() marks an unreachable or hung host down within its
timeout and its VMs 'unknown', then up again with their power state read back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import NotFound
from flexvm.model.guest import GuestState
from flexvm.model.host import HostState
from flexvm.model.vm import PowerState, ProvisioningState
from flexvm.platform import Platform
from flexvm.store.repositories import HostRepo, NetworkRepo
from tests.unit.pool_helpers import add_host, pool_settings, room_of, run
from tests.unit.waiting import wait_done

HEALTH_TIMEOUT = 0.5
LEFTOVERS = ["domain web1", "volume web1-os.qcow2", "volume web1.console.log"]


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url, health_timeout=HEALTH_TIMEOUT)


def dies_at(monkeypatch: pytest.MonkeyPatch, driver: FakeDriver, method: str) -> None:
    """The host stops answering when ``method`` is next called on it (that call included)."""
    original: Callable[..., Any] = getattr(driver, method)

    def unplugged(*args: Any, **kwargs: Any) -> Any:
        driver.host.reachable = False
        return original(*args, **kwargs)

    monkeypatch.setattr(driver, method, unplugged)


def two_hosts(platform: Platform, **a_settings: Any) -> tuple[FakeDriver, FakeDriver]:
    """'a' is smaller, so best fit chooses it first; 'b' is where a create fails over to."""
    a = add_host(platform, "a", memory_mib=4096, **a_settings)
    b = add_host(platform, "b", memory_mib=8192)
    return a, b


def vm_exists(platform: Platform, name: str) -> bool:
    try:
        platform.vms.get(name)
    except NotFound:
        return False
    return True


# --- fail-over during create -----------------------------------------------------------------------


@pytest.mark.parametrize("step", ["has_image_volume", "create_overlay", "define", "start"])
def test_a_create_whose_host_dies_fails_over_and_the_leftovers_go_when_it_returns(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    a, b = two_hosts(platform)
    dies_at(monkeypatch, a, step)
    operation = platform.vms.create("web1", "Standard_B1s", image)
    assert operation.params["host"] == "a"
    done = run(platform, operation)
    assert done.result["failed_over_from"] == ["a"]
    assert done.result["host"] == "b"
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host) == ("b", "b")
    assert (vm.provisioning_state, vm.power_state) == (ProvisioningState.SUCCEEDED, PowerState.RUNNING)
    assert b.host.guests["web1"].state is GuestState.RUNNING
    assert platform.hosts.detail("a").allocated.memory_mib == 0
    assert platform.hosts.detail("b").allocated.memory_mib == 1024
    assert sorted(platform.hosts.detail("a").leftovers) == LEFTOVERS
    # What was made before the host died is still there.
    assert ("web1-os.qcow2" in a.host.instances) is (step in ("define", "start"))
    assert ("web1" in a.host.guests) is (step == "start")

    states = platform.health.check_all()  # still unreachable: down, leftovers kept
    assert states == {"a": HostState.DOWN, "b": HostState.UP}
    assert sorted(platform.hosts.detail("a").leftovers) == LEFTOVERS

    a.host.reachable = True
    assert platform.health.check_all() == {"a": HostState.UP, "b": HostState.UP}
    assert platform.hosts.detail("a").leftovers == []
    assert "web1" not in a.host.guests
    assert not [v for v in a.host.instances if v.startswith("web1")]
    # The VM itself, on b, is untouched.
    assert b.host.guests["web1"].state is GuestState.RUNNING
    assert {"web1-os.qcow2", "web1.console.log"} <= set(b.host.instances)
    assert platform.vms.get("web1").power_state is PowerState.RUNNING


def test_a_pinned_create_whose_host_dies_fails_cleanly(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_hosts(platform)
    dies_at(monkeypatch, a, "define")
    done = run(platform, platform.vms.create("web1", "Standard_B1s", image, host="a"), status="failed")
    assert done.error is not None and done.error["code"] == "HypervisorUnavailable"
    assert "unreachable" in done.error["message"]
    assert "failed_over_from" not in done.result
    assert not vm_exists(platform, "web1")
    assert platform.hosts.detail("a").allocated.memory_mib == 0
    assert room_of(platform, "a").memory_mib_free == room_of(platform, "a").memory_mib_total
    assert sorted(platform.hosts.detail("a").leftovers) == LEFTOVERS
    assert b.host.guests == {} and b.host.instances == {}
    # Leftovers stay while the host is away, and go once it answers.
    assert platform.health.clean_leftovers("a") == 0
    assert len(platform.hosts.detail("a").leftovers) == 3
    a.host.reachable = True
    assert platform.health.clean_leftovers("a") == 3
    assert platform.health.clean_leftovers("a") == 0
    assert not [v for v in a.host.instances if v.startswith("web1")]


def test_a_create_with_nowhere_else_to_go_fails_cleanly(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = add_host(platform, "a")
    dies_at(monkeypatch, a, "define")
    done = run(platform, platform.vms.create("web1", "Standard_B1s", image), status="failed")
    assert done.error is not None and done.error["code"] == "HypervisorUnavailable"
    assert not vm_exists(platform, "web1")
    assert platform.hosts.detail("a").allocated.memory_mib == 0
    assert sorted(platform.hosts.detail("a").leftovers) == LEFTOVERS


def test_a_failed_over_vm_leaves_no_reservation_on_the_network_it_left(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The address on the dead host's network is released in the move; its DHCP reservation file
    must go with it, or dnsmasq keeps handing that address to this MAC while flexvm gives it away."""
    dhcp = tmp_path / "dhcp"
    dhcp.mkdir()
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.10", "10.213.0.20", dhcp_hosts_dir=str(dhcp))
    a, _b = two_hosts(platform, network="lan", bridge="br-lan")  # b has no network
    dies_at(monkeypatch, a, "define")
    done = run(platform, platform.vms.create("web1", "Standard_B1s", image))
    assert done.result["failed_over_from"] == ["a"]
    assert platform.vms.get("web1").nics[0].network == "user"
    with platform.db.session() as session:
        assert NetworkRepo(session).used_addresses("lan") == set()
    assert sorted(p.name for p in dhcp.iterdir()) == []


def test_a_failed_over_vm_on_the_same_network_keeps_one_reservation(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dhcp = tmp_path / "dhcp"
    dhcp.mkdir()
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.10", "10.213.0.20", dhcp_hosts_dir=str(dhcp))
    a = add_host(platform, "a", memory_mib=4096, network="lan", bridge="br-lan")
    b = add_host(platform, "b", memory_mib=8192, network="lan", bridge="br-lan")
    dies_at(monkeypatch, a, "define")
    run(platform, platform.vms.create("web1", "Standard_B1s", image))
    vm = platform.vms.get("web1")
    with platform.db.session() as session:
        ((network, ip, mac),) = NetworkRepo(session).addresses_of(vm.id)
    assert network == "lan"
    assert {p.name: p.read_text() for p in dhcp.iterdir()} == {f"flexvm-{mac.replace(':', '-')}": f"{mac},{ip}\n"}
    assert b.host.guests["web1"].spec.nics[0].source == "br-lan"


def test_a_retried_create_on_a_host_that_came_back_is_not_blocked_by_its_leftovers(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host answers again but no health check has run yet: the leftovers of the failed create
    (same VM name, same volume names) must not make the retry fail."""
    a, _b = two_hosts(platform)
    dies_at(monkeypatch, a, "define")
    run(platform, platform.vms.create("web1", "Standard_B1s", image, host="a"), status="failed")
    monkeypatch.undo()
    a.host.reachable = True
    done = wait_done(platform, platform.vms.create("web1", "Standard_B1s", image, host="a").id)
    assert done.status.value == "succeeded", done.error
    assert a.host.guests["web1"].state is GuestState.RUNNING


# --- health checks ----------------------------------------------------------------------------------


def test_an_unreachable_host_is_marked_down_and_its_vms_unknown_then_up_and_running(
    platform: Platform, image: str
) -> None:
    a, b = two_hosts(platform)
    run(platform, platform.vms.create("web1", "Standard_B1s", image, host="a"))
    run(platform, platform.vms.create("web2", "Standard_B1s", image, host="b"))
    a.host.reachable = False
    started = time.monotonic()
    assert platform.health.check_all() == {"a": HostState.DOWN, "b": HostState.UP}
    assert time.monotonic() - started < HEALTH_TIMEOUT + 2
    host = platform.hosts.get("a")
    assert host.state is HostState.DOWN and "unreachable" in host.state_reason
    assert platform.vms.get("web1").power_state is PowerState.UNKNOWN
    assert platform.vms.get("web1").host == "a"  # unseen, not lost
    assert platform.vms.get("web2").power_state is PowerState.RUNNING
    # A host that is down takes no new VM.
    run(platform, platform.vms.create("web3", "Standard_B1s", image))
    assert platform.vms.get("web3").host == "b"

    a.host.reachable = True
    assert platform.health.check_all() == {"a": HostState.UP, "b": HostState.UP}
    host = platform.hosts.get("a")
    assert (host.state, host.state_reason) == (HostState.UP, "")
    assert platform.vms.get("web1").power_state is PowerState.RUNNING

    # A guest that stopped while its host was away is read back stopped.
    a.host.reachable = False
    platform.health.check_all()
    a.host.reachable = True
    a.destroy("web1")
    platform.health.check_all()
    assert platform.vms.get("web1").power_state is PowerState.STOPPED


def test_a_hung_host_is_marked_down_within_about_the_timeout(
    platform: Platform, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = two_hosts(platform)
    run(platform, platform.vms.create("web1", "Standard_B1s", image, host="a"))
    release = threading.Event()
    answer = a.host_info

    def hangs() -> Any:
        release.wait(20)  # far longer than the timeout; released at the end of the test
        return answer()

    monkeypatch.setattr(a, "host_info", hangs)
    try:
        started = time.monotonic()
        states = platform.health.check_all()
        took = time.monotonic() - started
    finally:
        release.set()
    assert states == {"a": HostState.DOWN, "b": HostState.UP}
    assert HEALTH_TIMEOUT * 0.9 <= took < HEALTH_TIMEOUT + 3, took
    assert f"did not answer within {HEALTH_TIMEOUT} s" in platform.hosts.get("a").state_reason
    assert platform.vms.get("web1").power_state is PowerState.UNKNOWN


def test_a_host_in_maintenance_stays_in_maintenance(platform: Platform) -> None:
    """The health check writes up or down, never over an operator's maintenance."""
    a = add_host(platform, "a")
    with platform.db.session() as session:
        host = HostRepo(session).lock("a")
        host.set_state(HostState.MAINTENANCE)
        HostRepo(session).save(host)
    assert platform.health.check_all() == {"a": HostState.MAINTENANCE}
    a.host.reachable = False
    assert platform.health.check_all() == {"a": HostState.MAINTENANCE}
    assert "unreachable" in platform.hosts.get("a").state_reason
