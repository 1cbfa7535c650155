"""The host pool through HostService on a started platform: add, update, remove, refresh.

Pins: adding a fake host is an operation that records its facts and accelerator; malformed URIs,
bad names, duplicate names and URIs, and out-of-range ratios or capacities are refused at request
time naming the field (no row, no operation); an unreachable host fails the operation clearly and
leaves no row; updates change ratios, fault domain and advertised capacity and the room follows;
a host is removed only when no VM runs there or keeps its disk there; refresh and
call_with_timeout mark a host down (with the reason) and up again.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from flexvm.compute.hosts import HostChanges, HostRequest, call_with_timeout, check_ratios, check_uri
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import AlreadyExists, Conflict, HypervisorError, HypervisorUnavailable, InvalidInput, NotFound
from flexvm.model.host import Accelerator, HostState
from flexvm.model.units import GIB
from flexvm.platform import Platform
from tests.unit.pool_helpers import add_host, fake_uri, room_of, run


def host_names(platform: Platform) -> list[str]:
    return [h.name for h in platform.hosts.list()]


def host_operations(platform: Platform) -> list[str]:
    return [op.target_name for op in platform.runner.list() if op.kind == "host.add"]


# --- add -------------------------------------------------------------------------------------


def test_adding_a_fake_host_records_its_facts_and_accelerator(platform: Platform) -> None:
    uri = fake_uri(cpus=6, memory_mib=12288, disk_gib=250)
    operation = platform.hosts.add(HostRequest("h2", uri))
    assert operation.kind == "host.add" and operation.target_name == "h2"
    done = run(platform, operation)
    assert done.result == {"accelerator": "tcg", "cpus": 6, "memory_mib": 12288}
    assert [s.name for s in done.steps] == ["connect", "probe", "register"]
    host = platform.hosts.get("h2")
    assert (host.uri, host.state, host.state_reason) == (uri, HostState.UP, "")
    assert (host.cpus, host.memory_mib, host.disk_capacity_bytes) == (6, 12288, 250 * GIB)
    assert host.accelerator is Accelerator.TCG
    assert "reporting TCG" in host.accelerator_reason
    assert host.hostname == uri and host.cpu_model == "fake" and host.last_seen is not None
    # The defaults of a new host: 4 vCPUs per CPU, no memory or disk overcommit, 512M kept back.
    assert (host.cpu_ratio, host.ram_ratio, host.disk_ratio, host.reserved_memory_mib) == (4.0, 1.0, 1.0, 512)
    assert host_names(platform) == ["h2", "local"]


def test_a_host_is_added_with_its_settings(platform: Platform) -> None:
    add_host(
        platform,
        "h2",
        cpu_ratio=2.0,
        ram_ratio=1.5,
        disk_ratio=3.0,
        fault_domain="rack-1",
        advertised_cpus=2,
        advertised_memory_mib=4096,
        reserved_memory_mib=1024,
    )
    host = platform.hosts.get("h2")
    assert (host.cpu_ratio, host.ram_ratio, host.disk_ratio) == (2.0, 1.5, 3.0)
    assert (host.fault_domain, host.advertised_cpus, host.advertised_memory_mib) == ("rack-1", 2, 4096)
    room = room_of(platform, "h2")
    assert (room.vcpus_total, room.memory_mib_total, room.disk_bytes_total) == (4, 4608, 300 * GIB)


MALFORMED_URIS = ["nonsense", "http://x", "qemu+tcp:///system", "qemu:///nowhere", "qemu+ssh:///system", "", "qemu://"]


@pytest.mark.parametrize("uri", MALFORMED_URIS)
def test_a_malformed_uri_is_refused_naming_uri(uri: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        HostRequest("h2", uri).check()
    assert caught.value.field == "uri"
    assert caught.value.message.startswith("uri: ")


def test_a_host_with_a_malformed_uri_is_refused_and_nothing_is_recorded(platform: Platform) -> None:
    for uri in MALFORMED_URIS:
        with pytest.raises(InvalidInput) as caught:
            platform.hosts.add(HostRequest("h2", uri))
        assert caught.value.field == "uri"
    assert host_names(platform) == ["local"]
    assert host_operations(platform) == []


@pytest.mark.parametrize(
    "uri",
    ["qemu:///system", "qemu:///session", "qemu+ssh://root@h2/system", "qemu+tcp://10.0.0.2/system", "fake://x"],
)
def test_well_formed_uris_pass_the_check(uri: str) -> None:
    check_uri(uri)


def test_a_local_unix_socket_uri_passes_the_check() -> None:
    """qemu+unix:///system is libvirt's explicit local-socket URI (its scheme is in URI_SCHEMES),
    so it has no host part by design and must not be refused for lacking one."""
    check_uri("qemu+unix:///system")


def test_a_bad_name_or_an_unknown_network_is_refused_before_anything_runs(platform: Platform) -> None:
    with pytest.raises(InvalidInput) as caught:
        platform.hosts.add(HostRequest("bad name", fake_uri()))
    assert caught.value.field == "name"
    with pytest.raises(NotFound):
        platform.hosts.add(HostRequest("h2", fake_uri(), HostChanges(network="nope", bridge="br0")))
    assert host_operations(platform) == []
    assert host_names(platform) == ["local"]


def test_an_unreachable_libvirt_host_fails_the_operation_and_leaves_no_row(platform: Platform) -> None:
    uri = "qemu+tcp://127.0.0.1:1/system"  # loopback, a port nothing listens on: refused at once
    done = run(platform, platform.hosts.add(HostRequest("h2", uri)), status="failed")
    assert done.error is not None
    assert done.error["code"] == "HypervisorUnavailable"
    assert uri in done.error["message"] and "cannot connect" in done.error["message"]
    assert [s.status for s in done.steps] == ["failed"]
    assert host_names(platform) == ["local"]
    with pytest.raises(NotFound):
        platform.hosts.get("h2")


def test_a_fake_host_that_cannot_be_reached_or_probed_fails_the_operation_and_leaves_no_row(
    platform: Platform,
) -> None:
    unreachable, unprobed = fake_uri(), fake_uri()
    FakeDriver.for_uri(unreachable).host.reachable = False
    FakeDriver.for_uri(unprobed).fail_next("probe_accelerator")
    done = run(platform, platform.hosts.add(HostRequest("h2", unreachable)), status="failed")
    assert done.error is not None and "unreachable" in done.error["message"]
    done = run(platform, platform.hosts.add(HostRequest("h3", unprobed)), status="failed")
    assert done.error is not None and done.error["code"] == HypervisorError.code
    assert [s.name for s in done.steps] == ["connect", "probe"]
    assert host_names(platform) == ["local"]


def test_a_duplicate_name_or_uri_is_refused_naming_what_has_it(platform: Platform) -> None:
    with pytest.raises(AlreadyExists) as caught:
        platform.hosts.add(HostRequest("local", fake_uri()))
    assert "'local'" in caught.value.message
    uri = fake_uri()
    run(platform, platform.hosts.add(HostRequest("h2", uri)))
    with pytest.raises(AlreadyExists) as caught:
        platform.hosts.add(HostRequest("h3", uri))
    assert uri in caught.value.message and "h2" in caught.value.message
    with pytest.raises(AlreadyExists):
        platform.hosts.add(HostRequest("h3", platform.settings.local_uri))
    assert host_names(platform) == ["h2", "local"]
    assert host_operations(platform) == ["h2"]


BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"cpu_ratio": 0.5}, "cpu_ratio"),
    ({"ram_ratio": 0.99}, "ram_ratio"),
    ({"disk_ratio": 0.0}, "disk_ratio"),
    ({"cpu_ratio": 1000.0}, "cpu_ratio"),
    ({"ram_ratio": 10.0}, "ram_ratio"),
    ({"disk_ratio": 100.0}, "disk_ratio"),
    ({"cpu_ratio": -1.0}, "cpu_ratio"),
    ({"advertised_cpus": 0}, "cpus"),
    ({"advertised_cpus": 5000}, "cpus"),
    ({"advertised_memory_mib": 100}, "memory"),
    ({"reserved_memory_mib": -1}, "reserved_memory"),
    ({"fault_domain": "rack 1"}, "fault_domain"),
    ({"network": "lan"}, "bridge"),
    ({"bridge": "br0"}, "bridge"),
]


@pytest.mark.parametrize(("settings", "field"), BAD_SETTINGS)
def test_bad_settings_are_refused_naming_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        HostChanges(**settings).check()
    assert caught.value.field == field
    with pytest.raises(InvalidInput) as caught:
        HostRequest("h2", fake_uri(), HostChanges(**settings)).check()
    assert caught.value.field == field


def test_a_bridge_that_cannot_be_an_interface_name_is_refused_naming_bridge() -> None:
    """Linux interface names are 1-15 characters without '/' or spaces; anything else would only
    fail later, at the define of every VM placed on the host."""
    HostChanges(network="lan", bridge="br-lan").check()
    for bridge in ("br 0", "br/0", "bridge-name-too-long", ""):
        with pytest.raises(InvalidInput) as caught:
            HostChanges(network="lan", bridge=bridge).check()
        assert caught.value.field == "bridge", bridge


def test_bad_settings_on_add_and_update_record_and_change_nothing(platform: Platform) -> None:
    before = platform.hosts.get("local")
    for settings, field in BAD_SETTINGS:
        with pytest.raises(InvalidInput) as caught:
            platform.hosts.add(HostRequest("h2", fake_uri(), HostChanges(**settings)))
        assert caught.value.field == field
        with pytest.raises(InvalidInput) as caught:
            platform.hosts.update("local", HostChanges(**settings))
        assert caught.value.field == field
    assert host_names(platform) == ["local"]
    assert host_operations(platform) == []
    assert platform.hosts.get("local") == before


def test_the_ratio_limits_themselves_are_allowed() -> None:
    check_ratios({"cpu_ratio": 1.0, "ram_ratio": 1.0, "disk_ratio": 1.0})
    check_ratios({"cpu_ratio": 64.0, "ram_ratio": 4.0, "disk_ratio": 20.0})
    check_ratios({"cpu_ratio": None, "ram_ratio": None, "disk_ratio": None})
    with pytest.raises(InvalidInput) as caught:
        check_ratios({"ram_ratio": 4.01})
    assert "between 1 and 4" in caught.value.message


# --- update ----------------------------------------------------------------------------------


def test_update_changes_ratios_fault_domain_and_capacity_and_the_room_follows(platform: Platform) -> None:
    # The fixture's host: 4 CPUs, 8 GiB, 100 GiB -> 16 vCPUs, 7.5 GiB, 100 GiB.
    room = room_of(platform, "local")
    assert (room.vcpus_total, room.memory_mib_total, room.disk_bytes_total) == (16, 7680, 100 * GIB)
    updated = platform.hosts.update(
        "local",
        HostChanges(cpu_ratio=2.0, ram_ratio=2.0, disk_ratio=1.5, fault_domain="rack-2", reserved_memory_mib=1024),
    )
    assert (updated.cpu_ratio, updated.ram_ratio, updated.disk_ratio, updated.fault_domain) == (2.0, 2.0, 1.5, "rack-2")
    room = room_of(platform, "local")
    assert (room.vcpus_total, room.memory_mib_total, room.disk_bytes_total) == (8, 14336, 150 * GIB)

    platform.hosts.update("local", HostChanges(advertised_cpus=1, advertised_memory_mib=2048))
    room = room_of(platform, "local")
    assert (room.vcpus_total, room.memory_mib_total) == (2, 2048)  # 1 x 2; (2048 - 1024) x 2
    fits = {s.size.name: s.fits_now for s in platform.sizes.list_with_fit()}
    assert fits["Standard_B1s"] == 2 and fits["Standard_B2s"] == 0


def test_update_leaves_what_it_was_not_given_and_a_refresh_keeps_it(platform: Platform) -> None:
    platform.hosts.update("local", HostChanges(cpu_ratio=8.0, fault_domain="rack-1", advertised_cpus=2))
    platform.hosts.update("local", HostChanges(ram_ratio=1.25))
    host = platform.hosts.get("local")
    assert (host.cpu_ratio, host.ram_ratio, host.fault_domain, host.advertised_cpus) == (8.0, 1.25, "rack-1", 2)
    host = platform.hosts.refresh("local")
    assert (host.cpu_ratio, host.ram_ratio, host.fault_domain, host.advertised_cpus) == (8.0, 1.25, "rack-1", 2)
    with pytest.raises(NotFound):
        platform.hosts.update("nope", HostChanges(cpu_ratio=2.0))


# --- remove ----------------------------------------------------------------------------------


def test_remove_is_refused_while_a_vm_runs_there_or_keeps_its_disk_there(platform: Platform, image: str) -> None:
    add_host(platform, "h2")
    run(platform, platform.vms.create("web1", "Standard_B1s", image, host="h2"))
    run(platform, platform.vms.create("web2", "Standard_B1s", image, host="h2"))
    with pytest.raises(Conflict) as caught:
        platform.hosts.remove("h2")
    assert caught.value.details == {"vms": ["web1", "web2"]}
    assert "web1, web2" in caught.value.message
    run(platform, platform.vms.delete("web1"))
    run(platform, platform.vms.deallocate("web2"))
    vm = platform.vms.get("web2")
    assert (vm.host, vm.disk_host) == (None, "h2")
    with pytest.raises(Conflict) as caught:
        platform.hosts.remove("h2")
    assert caught.value.details == {"vms": ["web2"]}
    run(platform, platform.vms.delete("web2"))
    platform.hosts.remove("h2")
    assert host_names(platform) == ["local"]
    with pytest.raises(NotFound):
        platform.hosts.remove("h2")


def test_a_removed_host_can_be_added_again(platform: Platform) -> None:
    uri = fake_uri()
    run(platform, platform.hosts.add(HostRequest("h2", uri)))
    platform.hosts.remove("h2")
    run(platform, platform.hosts.add(HostRequest("h2", uri)))
    assert platform.hosts.get("h2").uri == uri


# --- refresh and call_with_timeout -------------------------------------------------------------


def test_refresh_marks_an_unreachable_host_down_with_the_reason_and_up_with_new_facts(
    platform: Platform, fake_host: FakeDriver
) -> None:
    fake_host.host.reachable = False
    host = platform.hosts.refresh("local", timeout=1.0)
    assert host.state is HostState.DOWN
    assert "unreachable" in host.state_reason
    assert platform.hosts.get("local").state is HostState.DOWN
    fake_host.host.reachable = True
    fake_host.host.cpus, fake_host.host.memory_mib = 12, 16384
    host = platform.hosts.refresh("local", timeout=1.0)
    assert (host.state, host.state_reason) == (HostState.UP, "")
    assert (host.cpus, host.memory_mib) == (12, 16384)
    assert room_of(platform, "local").vcpus_total == 48


def test_call_with_timeout_returns_raises_or_gives_up() -> None:
    assert call_with_timeout(lambda: 42, None, "never shown") == 42
    assert call_with_timeout(lambda: 42, 1.0, "never shown") == 42

    def fails() -> int:
        raise HypervisorError("refused")

    with pytest.raises(HypervisorError, match="refused"):
        call_with_timeout(fails, 1.0, "never shown")

    release = threading.Event()
    try:
        started = time.monotonic()
        with pytest.raises(HypervisorUnavailable, match="did not answer"):
            call_with_timeout(lambda: release.wait(10), 0.2, "h did not answer within 0.2 s")
        assert time.monotonic() - started < 5  # gave up near 0.2 s, not after the call's 10 s
    finally:
        release.set()


def test_fake_host_names_are_unique_per_test() -> None:
    """Guards the helpers' assumption: two fresh URIs are two different in-memory hosts."""
    a, b = fake_uri(), fake_uri()
    assert a != b
    assert FakeDriver.for_uri(a).host is not FakeDriver.for_uri(b).host
    assert FakeDriver.for_uri(a).host is FakeDriver.for_uri(a.split("?")[0]).host
