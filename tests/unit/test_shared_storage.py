"""Shared storage on fake hosts: declared once every host reaches it, chosen per VM, and moved with.

Pins: a bad path, a taken name or path, and a host that cannot reach the directory are refused
(naming the host and why) with nothing recorded; `show` asks every host again and lists the VMs
there; a VM created on it keeps its disks in the shared directory, not on its host, and takes none
of the host's disk; a live move of it moves memory only and leaves its disk where it is, the source
keeping nothing; a cold move copies nothing; delete removes its disks from the directory; removing
a storage a VM uses is refused; and a second guest on another host cannot open a disk a running
guest holds (the lock manager).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import AlreadyExists, Conflict, HypervisorError, InvalidInput
from flexvm.model.guest import GuestState
from flexvm.model.storage import SharedStorage
from flexvm.model.units import GIB
from flexvm.platform import Platform
from tests.unit.flex_helpers import claims, guest, make_vm, quick_image, volumes_of
from tests.unit.pool_helpers import add_host, pool_settings, run


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def shared() -> str:
    """A fake shared directory lives as long as the process (as fake hosts do): each test its own."""
    return f"/srv/flexvm-shared-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hosts(platform: Platform, small_disk: Path) -> dict[str, FakeDriver]:
    quick_image(platform, small_disk)
    return {"a": add_host(platform, "a"), "b": add_host(platform, "b")}


def shared_files(shared: str, vm: str) -> list[str]:
    volumes = FakeDriver._stores.get(shared, {})
    return sorted(v for v in volumes if v.startswith(f"{vm}-") or v == f"{vm}.console.log")


# --- declaring it ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("relative/dir", "not an absolute path"),
        ("/srv/../etc", "not a plain path"),
        ("/etc/flexvm", "system directory"),
        ("/var/lib/libvirt/flexvm/instances", "flexvm's own host pools"),
    ],
)
def test_a_bad_path_is_refused_naming_the_rule(
    platform: Platform, hosts: dict[str, FakeDriver], path: str, says: str
) -> None:
    with pytest.raises(InvalidInput, match=says) as caught:
        platform.storage.add("nas", path)
    assert caught.value.field == "path"
    assert platform.storage.list() == []


def test_a_host_that_cannot_reach_it_is_named_and_nothing_is_recorded(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    hosts["b"].host.unreachable_stores.add(shared)
    with pytest.raises(Conflict, match=f"not reachable from every host: b: {shared} is not mounted") as caught:
        platform.storage.add("nas", shared)
    assert list(caught.value.details["hosts"]) == ["b"]
    assert platform.storage.list() == []


def test_every_host_is_checked_and_show_lists_them_and_the_vms(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    report = platform.storage.add("nas", shared + "/")
    assert report.storage == SharedStorage("nas", shared)  # normalised
    assert report.hosts == {"a": None, "b": None}
    assert FakeDriver._stores[shared] == {}  # the marker written by one host and read by the other is gone
    with pytest.raises(AlreadyExists, match="storage 'nas'"):
        platform.storage.add("nas", "/srv/other")
    with pytest.raises(AlreadyExists, match=f"path '{shared}"):
        platform.storage.add("nas2", shared)
    make_vm(platform, "db", storage="nas")
    hosts["b"].host.unreachable_stores.add(shared)  # its mount went away later
    shown = platform.storage.show("nas")
    assert shown.vms == ["db"]
    assert shown.hosts["a"] is None and "not mounted" in str(shown.hosts["b"])


def test_a_host_that_is_not_up_is_not_asked_and_does_not_hold_it_back(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    hosts["b"].host.reachable = False
    platform.health.check_all()
    report = platform.storage.add("nas", shared)
    assert report.hosts == {"a": None} and report.skipped == {"b": "down"}
    assert [s.name for s in platform.storage.list()] == ["nas"]


def test_an_unknown_storage_is_refused_at_create_naming_the_known_ones(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    platform.storage.add("nas", shared)
    with pytest.raises(InvalidInput, match="unknown storage 'san'; known: nas"):
        platform.vms.create("db", "Standard_B1s", "img", storage="san")
    assert platform.vms.list() == []


# --- VMs on it ---------------------------------------------------------------------------------


def test_a_vm_on_shared_storage_keeps_its_disks_there_and_none_of_its_hosts_disk(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    platform.storage.add("nas", shared)
    vm = make_vm(platform, "db", storage="nas")
    local = make_vm(platform, "web", host="b")
    assert vm.storage == SharedStorage("nas", shared)
    assert shared_files(shared, "db") == ["db-os.qcow2", "db.console.log"]
    assert volumes_of(hosts["a"], "db") == []
    assert claims(platform, "a") == Allocation(1, 1024, 0)  # CPU and memory only
    assert claims(platform, "b") == Allocation(1, 1024, local.disk_bytes)
    assert platform.vms.console("db").text  # read from the shared log


def test_a_live_move_moves_memory_only_and_leaves_the_disk_in_place(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    platform.storage.add("nas", shared)
    make_vm(platform, "db", storage="nas")
    disk = FakeDriver._stores[shared]["db-os.qcow2"]
    done = run(platform, platform.mover.migrate("db", "b"))
    assert done.result["disk_bytes"] == 0
    assert FakeDriver._stores[shared]["db-os.qcow2"] is disk  # the same file, never deleted or copied
    moved = guest(hosts["b"], "db")
    assert moved is not None and moved.state is GuestState.RUNNING
    assert guest(hosts["a"], "db") is None and volumes_of(hosts["b"], "db") == []
    steps = [s.name for s in platform.runner.get(done.id).steps]
    assert "prepare" not in steps  # no overlay made on the destination
    assert next(s.detail for s in platform.runner.get(done.id).steps if s.name == "migrate").endswith(
        "memory only (disks on shared storage 'nas')"
    )
    back = run(platform, platform.mover.migrate("db", "a", cold=True))
    assert "copy" not in [s.name for s in platform.runner.get(back.id).steps]
    assert shared_files(shared, "db") == ["db-os.qcow2", "db.console.log"]
    assert platform.vms.get("db").host == "a"


def test_deleting_the_vm_removes_its_disks_and_then_the_storage_may_go(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    platform.storage.add("nas", shared)
    make_vm(platform, "db", storage="nas")
    with pytest.raises(Conflict, match="still holds the disks of: db"):
        platform.storage.remove("nas")
    run(platform, platform.vms.delete("db"))
    assert shared_files(shared, "db") == []
    platform.storage.remove("nas")
    assert platform.storage.list() == []


def test_a_second_guest_cannot_open_a_disk_a_running_guest_holds(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    platform.storage.add("nas", shared)
    vm = make_vm(platform, "db", storage="nas")
    running = guest(hosts["a"], "db")
    assert running is not None
    hosts["b"].define(running.spec)  # a second copy of the same guest, on the other host
    with pytest.raises(HypervisorError, match="Failed to acquire lock"):
        hosts["b"].start(vm.domain_name)
    assert guest(hosts["b"], "db") is not None and guest(hosts["b"], "db").state is GuestState.SHUTOFF  # type: ignore[union-attr]


def test_disk_growth_of_a_shared_vm_is_not_held_to_its_hosts_disk(
    platform: Platform, hosts: dict[str, FakeDriver], shared: str
) -> None:
    platform.storage.add("nas", shared)
    make_vm(platform, "db", storage="nas")
    run(platform, platform.vms.resize_disk("db", 200 * GIB))  # more than host a's 100 GiB
    assert FakeDriver._stores[shared]["db-os.qcow2"].size == 200 * GIB
