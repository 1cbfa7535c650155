"""Snapshots of a VM on the fake driver: create, list, revert, delete.

Pins: a snapshot is an operation that names it (a dated default when unnamed) and the host lists
it; revert brings back the disk's content and the power state it was taken in, and the record
follows; delete removes it; an unknown or duplicate snapshot fails its operation with the
hypervisor's error; bad names are refused naming 'snapshot' before anything is recorded; a
deallocated VM has no snapshots and takes none; a VM busy with another operation is Busy.
(capture, export and import need real qcow2 files: the integration tests cover them.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import AlreadyExists, Busy, InvalidInput, InvalidState, NotFound
from flexvm.model.guest import GuestState
from flexvm.model.vm import PowerState
from flexvm.platform import Platform
from tests.unit.flex_helpers import Gate, finish, guest, make_vm, quick_image
from tests.unit.pool_helpers import add_host, pool_settings, run

DISK = "web1-os.qcow2"


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    return quick_image(platform, small_disk)


@pytest.fixture
def a(platform: Platform, image: str) -> FakeDriver:
    driver = add_host(platform, "a")
    make_vm(platform, "web1")
    return driver


def snapshot_kinds(platform: Platform) -> list[str]:
    return [op.kind for op in platform.runner.list(target="web1") if "snapshot" in op.kind or op.kind == "vm.revert"]


def test_a_snapshot_is_named_listed_and_kept_by_the_host(platform: Platform, a: FakeDriver) -> None:
    done = run(platform, platform.files.snapshot("web1", "s1"))
    assert (done.kind, done.result) == ("vm.snapshot", {"snapshot": "s1"})
    unnamed = run(platform, platform.files.snapshot("web1"))
    assert re.fullmatch(r"snap-\d{8}-\d{6}", unnamed.result["snapshot"])
    assert platform.files.snapshots("web1") == ["s1", unnamed.result["snapshot"]]
    g = guest(a, "web1")
    assert g is not None and set(g.snapshots) == {"s1", unnamed.result["snapshot"]}
    assert platform.vms.get("web1").active_operation_id is None


def test_revert_brings_back_the_disk_and_the_power_state_it_was_taken_in(platform: Platform, a: FakeDriver) -> None:
    a.host.instances[DISK].data = b"before"
    run(platform, platform.files.snapshot("web1", "running"))
    a.host.instances[DISK].data = b"after"
    run(platform, platform.vms.stop("web1"))
    run(platform, platform.files.snapshot("web1", "stopped"))
    done = run(platform, platform.files.revert("web1", "running"))
    assert done.result == {"snapshot": "running", "running": True}
    assert a.host.instances[DISK].data == b"before"
    g = guest(a, "web1")
    assert g is not None and g.state is GuestState.RUNNING
    assert platform.vms.get("web1").power_state is PowerState.RUNNING
    done = run(platform, platform.files.revert("web1", "stopped"))
    assert done.result == {"snapshot": "stopped", "running": False}
    assert a.host.instances[DISK].data == b"after" and g.state is GuestState.SHUTOFF
    assert platform.vms.get("web1").power_state is PowerState.STOPPED


def test_delete_removes_a_snapshot(platform: Platform, a: FakeDriver) -> None:
    run(platform, platform.files.snapshot("web1", "s1"))
    run(platform, platform.files.snapshot("web1", "s2"))
    done = run(platform, platform.files.delete_snapshot("web1", "s1"))
    assert (done.kind, done.result) == ("vm.snapshot-delete", {"snapshot": "s1"})
    assert platform.files.snapshots("web1") == ["s2"]


def test_unknown_or_duplicate_snapshots_are_refused_before_any_operation(platform: Platform, a: FakeDriver) -> None:
    run(platform, platform.files.snapshot("web1", "s1"))
    before = len(platform.runner.list(limit=1000))
    with pytest.raises(AlreadyExists, match="snapshot 's1' of VM 'web1' already exists"):
        platform.files.snapshot("web1", "s1")
    with pytest.raises(NotFound, match="snapshot 'nope' of VM 'web1' not found"):
        platform.files.revert("web1", "nope")
    with pytest.raises(NotFound, match="snapshot 'nope' of VM 'web1' not found"):
        platform.files.delete_snapshot("web1", "nope")
    assert len(platform.runner.list(limit=1000)) == before
    assert platform.files.snapshots("web1") == ["s1"]
    vm = platform.vms.get("web1")
    assert (vm.power_state, vm.active_operation_id) == (PowerState.RUNNING, None)


def test_bad_snapshot_names_are_refused_naming_snapshot(platform: Platform, a: FakeDriver) -> None:
    for attempt in (
        lambda: platform.files.snapshot("web1", "bad name"),
        lambda: platform.files.revert("web1", "bad/name"),
        lambda: platform.files.delete_snapshot("web1", ""),
    ):
        with pytest.raises(InvalidInput) as caught:
            attempt()
        assert caught.value.field == "snapshot"
    assert snapshot_kinds(platform) == []


def test_a_deallocated_vm_has_no_snapshots_and_takes_none(platform: Platform, a: FakeDriver) -> None:
    run(platform, platform.vms.deallocate("web1"))
    assert platform.files.snapshots("web1") == []
    with pytest.raises(InvalidState) as caught:
        platform.files.snapshot("web1", "s1")
    assert "deallocated" in caught.value.message
    assert snapshot_kinds(platform) == []


def test_a_snapshot_while_another_operation_runs_is_busy(
    platform: Platform, a: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch, a, "set_vcpus")
    operation = platform.resizer.resize("web1", "Standard_B2s")
    try:
        gate.wait_reached()
        with pytest.raises(Busy) as caught:
            platform.files.snapshot("web1", "s1")
    finally:
        finish(platform, gate, operation)
    assert caught.value.details["operation_id"] == operation.id
    assert snapshot_kinds(platform) == []
