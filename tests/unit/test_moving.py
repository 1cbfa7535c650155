"""Moving VMs between fake hosts: plans, refusals, live, cold and disk-only moves, failures.

Pins: a plan picks the scheduler's host (best fit) or the one named and changes nothing; the same
host, a host down or in maintenance, no room, another network, and a running VM with snapshots
(live) are refused before anything moves, with no operation; a live move holds room on both hosts
while it runs, then frees the source, deletes its volumes and archives its console, so the console
reads across the move; a failed migration (injected, or the destination lost mid-way) leaves the VM
running where it was with no moving_to and nothing on the destination (or leftovers recorded,
removed when it answers again); cold moves keep a stopped VM stopped and restart a running one
there; a deallocated VM moves only its disk; a second operation meanwhile is Busy naming the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import Busy, CapacityError, InvalidInput, InvalidState, NotFound
from flexvm.model.guest import GuestState
from flexvm.model.host import HostState
from flexvm.model.units import GIB
from flexvm.model.vm import PowerState
from flexvm.platform import Platform
from flexvm.store.repositories import HostRepo
from tests.unit.flex_helpers import Gate, claims, failed, finish, guest, leftovers, make_vm, quick_image, volumes_of
from tests.unit.pool_helpers import add_host, pool_settings, run

DISK = 4 * GIB
WEB1 = Allocation(1, 1024, DISK)  # a Standard_B1s


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    return quick_image(platform, small_disk)


@pytest.fixture
def hosts(platform: Platform, image: str) -> dict[str, FakeDriver]:
    """'a' holds web1 (running); 'b' is as large; 'c' is smaller, so best fit prefers it."""
    drivers = {
        "a": add_host(platform, "a"),
        "b": add_host(platform, "b"),
        "c": add_host(platform, "c", memory_mib=4096),
    }
    make_vm(platform, "web1")
    return drivers


def migrations(platform: Platform) -> list[str]:
    return [op.kind for op in platform.runner.list(target="web1") if op.kind.startswith("vm.migrate")]


def assert_untouched(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    """Nothing moved, nothing held, nothing recorded."""
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host, vm.moving_to, vm.active_operation_id) == ("a", "a", None, None)
    assert claims(platform, "a") == WEB1 and claims(platform, "b") == Allocation()
    assert migrations(platform) == []
    g = guest(hosts["a"], "web1")
    assert g is not None and g.state is GuestState.RUNNING


def set_state(platform: Platform, host: str, state: HostState, reason: str = "") -> None:
    with platform.db.session() as session:
        record = HostRepo(session).lock(host)
        record.set_state(state, reason)
        HostRepo(session).save(record)


# --- plans -------------------------------------------------------------------------------------


def test_the_plan_picks_the_schedulers_host_or_the_one_named_and_changes_nothing(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    plan = platform.mover.plan("web1")
    assert (plan.vm, plan.source, plan.destination, plan.mode) == ("web1", "a", "c", "live")
    assert plan.rejected == {} and plan.estimate_seconds > 0
    named = platform.mover.plan("web1", "b")
    assert (named.destination, named.mode) == ("b", "live")
    assert named.rejected == {"c": "the request is pinned to host b"}
    assert platform.mover.plan("web1", cold=True).mode == "cold"
    assert_untouched(platform, hosts)


# --- refusals ------------------------------------------------------------------------------------


def test_a_move_to_its_own_host_is_refused_naming_to(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    for attempt in (platform.mover.plan, platform.mover.migrate):
        with pytest.raises(InvalidInput) as caught:
            attempt("web1", "a")
        assert caught.value.field == "to"
    with pytest.raises(NotFound):
        platform.mover.migrate("web1", "nowhere")
    assert_untouched(platform, hosts)


def test_a_host_down_or_in_maintenance_takes_no_vm(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    hosts["b"].host.reachable = False
    assert platform.health.check_all()["b"] is HostState.DOWN
    set_state(platform, "c", HostState.MAINTENANCE, "new disks")
    for to, state in (("b", "down"), ("c", "maintenance")):
        for attempt in (platform.mover.plan, platform.mover.migrate):
            with pytest.raises(InvalidState) as caught:
                attempt("web1", to)
            assert f"host {to} is {state}" in caught.value.message
    with pytest.raises(CapacityError) as caught:  # and the scheduler finds nowhere else
        platform.mover.migrate("web1")
    assert set(caught.value.details["hosts"]) >= {"b", "c"}
    hosts["b"].host.reachable = True
    assert_untouched(platform, hosts)


def test_a_host_without_room_is_refused_with_its_reason(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    add_host(platform, "tiny", memory_mib=1024)  # 512 MiB for guests
    with pytest.raises(CapacityError) as caught:
        platform.mover.migrate("web1", "tiny")
    assert "memory" in caught.value.details["hosts"]["tiny"]
    assert_untouched(platform, hosts)


def test_a_running_vm_with_snapshots_is_refused_live_but_moves_cold(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    run(platform, platform.files.snapshot("web1", "s1"))
    for attempt in (platform.mover.plan, platform.mover.migrate):
        with pytest.raises(InvalidState) as caught:
            attempt("web1", "b")
        assert "move it cold" in caught.value.message and "--" not in caught.value.message
        assert caught.value.details == {"snapshots": ["s1"], "remedy": {"option": "cold"}}
    assert_untouched(platform, hosts)
    done = run(platform, platform.mover.migrate("web1", "b", cold=True))
    assert done.kind == "vm.migrate-cold"
    vm = platform.vms.get("web1")
    assert (vm.host, vm.power_state) == ("b", PowerState.RUNNING)
    g = guest(hosts["b"], "web1")
    assert g is not None and g.state is GuestState.RUNNING


# --- networks ----------------------------------------------------------------------------------


@pytest.fixture
def lan(platform: Platform, image: str, tmp_path: Path) -> dict[str, FakeDriver]:
    """'a' and 'b' on network lan, 'c' (smaller: best fit's choice) on none; web1 on a, on lan."""
    dhcp = tmp_path / "dhcp"
    dhcp.mkdir()
    platform.networks.create("lan", "10.213.0.0/24", "10.213.0.10", "10.213.0.19", dhcp_hosts_dir=str(dhcp))
    drivers = {
        "a": add_host(platform, "a", network="lan", bridge="br-lan"),
        "b": add_host(platform, "b", network="lan", bridge="br-lan"),
        "c": add_host(platform, "c", memory_mib=4096),
    }
    make_vm(platform, "web1", host="a")
    assert platform.vms.get("web1").nics[0].network == "lan"
    return drivers


def test_a_move_to_a_host_on_another_network_is_refused(platform: Platform, lan: dict[str, FakeDriver]) -> None:
    for attempt in (platform.mover.plan, platform.mover.migrate):
        # The scheduler's network filter says so (with every other host's reason, too).
        with pytest.raises(CapacityError) as caught:
            attempt("web1", "c")
        assert "not on network lan" in caught.value.message
    assert_untouched(platform, lan)


def test_the_scheduler_chooses_a_host_on_the_vms_network(platform: Platform, lan: dict[str, FakeDriver]) -> None:
    """b is on lan and has room; c is not on lan. Without --to, the move goes to b rather than
    being refused because the scheduler chose c."""
    assert platform.mover.plan("web1").destination == "b"
    run(platform, platform.mover.migrate("web1"))
    vm = platform.vms.get("web1")
    assert (vm.host, vm.nics[0].network) == ("b", "lan")


# --- live ----------------------------------------------------------------------------------------


def test_a_live_move_holds_room_on_both_hosts_while_it_runs(
    platform: Platform, hosts: dict[str, FakeDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, hosts["a"], "migrate")
    operation = platform.mover.migrate("web1", "b")
    try:
        gate.wait_reached()
        vm = platform.vms.get("web1")
        during = (vm.host, vm.moving_to, claims(platform, "a"), claims(platform, "b"))
        with pytest.raises(Busy) as caught:
            platform.mover.migrate("web1", "c")
        with pytest.raises(Busy):
            platform.resizer.resize("web1", "Standard_B2s")
    finally:
        done = finish(platform, gate, operation)
    assert during == ("a", "b", WEB1, WEB1)
    assert caught.value.details["operation_id"] == operation.id
    assert done.status.value == "succeeded"


def test_a_live_move_frees_the_source_and_the_console_reads_across_it(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    a, b = hosts["a"], hosts["b"]
    before = platform.vms.console("web1").text
    assert "flexvm: ready name=web1" in before
    done = run(platform, platform.mover.migrate("web1", "b"))
    assert done.kind == "vm.migrate-live"
    assert (done.result["from"], done.result["to"], done.result["mode"]) == ("a", "b", "live")
    assert done.result["downtime_ms"] is not None
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host, vm.moving_to, vm.active_operation_id) == ("b", "b", None, None)
    assert vm.power_state is PowerState.RUNNING
    assert claims(platform, "a") == Allocation() and claims(platform, "b") == WEB1
    assert guest(a, "web1") is None and volumes_of(a, "web1") == []
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.RUNNING and g.boots == 1
    assert "web1-os.qcow2" in volumes_of(b, "web1")
    # The new host logs from here on; the console shows the old host's lines first.
    b.set_vcpus("web1", 2)
    text = platform.vms.console("web1").text
    assert text.startswith(before) and text[len(before) :].startswith("flexvm: state cpus=2")
    assert platform.vms.console("web1", len(before)).text.startswith("flexvm: state cpus=2")


def test_a_failed_migration_leaves_the_vm_running_on_the_source(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    hosts["a"].fail_next("migrate")
    done = failed(platform, platform.mover.migrate("web1", "b"), "HypervisorError")
    assert "injected" in done.error["message"]  # type: ignore[index]
    vm = platform.vms.get("web1")
    assert (vm.host, vm.moving_to, vm.active_operation_id, vm.power_state) == ("a", None, None, PowerState.RUNNING)
    assert claims(platform, "a") == WEB1 and claims(platform, "b") == Allocation()
    assert volumes_of(hosts["b"], "web1") == [] and guest(hosts["b"], "web1") is None
    g = guest(hosts["a"], "web1")
    assert g is not None and g.state is GuestState.RUNNING
    assert "web1-os.qcow2" in volumes_of(hosts["a"], "web1")
    run(platform, platform.mover.migrate("web1", "b"))  # and it can be tried again
    assert platform.vms.get("web1").host == "b"


def test_a_destination_lost_mid_migration_leaves_leftovers_removed_when_it_returns(
    platform: Platform, hosts: dict[str, FakeDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = hosts["a"], hosts["b"]
    original = a.migrate

    def lose_destination(*args: Any, **kwargs: Any) -> Any:
        b.host.reachable = False
        return original(*args, **kwargs)

    monkeypatch.setattr(a, "migrate", lose_destination)
    done = failed(platform, platform.mover.migrate("web1", "b"), "HypervisorError")
    assert "cannot connect" in done.error["message"]  # type: ignore[index]
    vm = platform.vms.get("web1")
    assert (vm.host, vm.moving_to, vm.power_state) == ("a", None, PowerState.RUNNING)
    g = guest(a, "web1")
    assert g is not None and g.state is GuestState.RUNNING
    assert leftovers(platform, "b") == ["domain web1", "volume web1-os.qcow2", "volume web1.console.log"]
    assert volumes_of(b, "web1") == ["web1-os.qcow2"], "the overlay made before it was lost"
    b.host.reachable = True
    platform.health.check_all()
    assert leftovers(platform, "b") == [] and volumes_of(b, "web1") == []
    assert "web1-os.qcow2" in volumes_of(a, "web1")


# --- cold and disk-only --------------------------------------------------------------------------


def test_a_stopped_vm_moves_cold_and_stays_stopped(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    a, b = hosts["a"], hosts["b"]
    run(platform, platform.vms.stop("web1"))
    plan = platform.mover.plan("web1", "b")
    assert plan.mode == "cold" and any("stays stopped" in n for n in plan.notes)
    done = run(platform, platform.mover.migrate("web1", "b"))
    assert done.kind == "vm.migrate-cold"
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host, vm.moving_to, vm.power_state) == ("b", "b", None, PowerState.STOPPED)
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.SHUTOFF
    assert guest(a, "web1") is None and volumes_of(a, "web1") == []
    assert claims(platform, "a") == Allocation() and claims(platform, "b") == WEB1


def test_a_running_vm_moved_cold_is_started_on_the_destination(
    platform: Platform, hosts: dict[str, FakeDriver]
) -> None:
    a, b = hosts["a"], hosts["b"]
    plan = platform.mover.plan("web1", "b", cold=True)
    assert plan.mode == "cold" and any("stopped, moved and started" in n for n in plan.notes)
    run(platform, platform.mover.migrate("web1", "b", cold=True))
    vm = platform.vms.get("web1")
    assert (vm.host, vm.moving_to, vm.power_state) == ("b", None, PowerState.RUNNING)
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.RUNNING
    assert guest(a, "web1") is None and volumes_of(a, "web1") == []
    ready = [line for line in platform.vms.console("web1").text.splitlines() if "flexvm: ready" in line]
    assert len(ready) == 2, "one boot on each host, both in the console"


def test_a_deallocated_vm_moves_only_its_disk(platform: Platform, hosts: dict[str, FakeDriver]) -> None:
    a, b = hosts["a"], hosts["b"]
    run(platform, platform.vms.deallocate("web1"))
    plan = platform.mover.plan("web1", "b")
    assert plan.mode == "disk" and plan.notes == ["deallocated: only its disk moves"]
    done = run(platform, platform.mover.migrate("web1", "b"))
    assert done.kind == "vm.migrate-disk"
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host, vm.moving_to, vm.power_state) == (None, "b", None, PowerState.DEALLOCATED)
    assert guest(b, "web1") is None and "web1-os.qcow2" in volumes_of(b, "web1")
    assert volumes_of(a, "web1") == []
    assert claims(platform, "a") == Allocation() and claims(platform, "b") == Allocation(0, 0, DISK)
    run(platform, platform.vms.start("web1"))
    assert platform.vms.get("web1").host == "b"
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.RUNNING
