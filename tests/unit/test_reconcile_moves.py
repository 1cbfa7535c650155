"""What a restarted server does with moves the previous one left half-done (``_settle_moves``).

An interrupted move is made by hand: the records a migration (or a drain, or a resize) writes
before it runs (operation running, VM held, moving_to set) plus whatever the fake hosts would show
at the moment the server died. Pins: a guest that already runs on the destination switches the
record there, leftovers recorded on the source; one that does not stays where it was with moving_to
cleared, leftovers recorded on the destination; leftovers go once the health check sees the host;
every VM a dead operation held is released; a half-done hot resize is recorded at the guest's shape.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.compute import guest_boot
from flexvm.config import Settings
from flexvm.drivers.fake import FakeDriver
from flexvm.model.guest import GuestState, MigrationRequest
from flexvm.model.operation import Operation, OperationStatus
from flexvm.model.units import GIB
from flexvm.model.vm import PowerState
from flexvm.platform import Platform
from flexvm.store.db import utcnow
from flexvm.store.repositories import OperationRepo, VmRepo
from tests.unit.flex_helpers import claims, guest, leftovers, make_vm, quick_image, volumes_of
from tests.unit.pool_helpers import add_host, pool_settings, run

VOLUMES = ["web1-os.qcow2", "web1.console.log"]


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


@pytest.fixture
def image(platform: Platform, small_disk: Path) -> str:
    return quick_image(platform, small_disk)


@pytest.fixture
def hosts(platform: Platform, image: str) -> tuple[FakeDriver, FakeDriver]:
    a, b = add_host(platform, "a"), add_host(platform, "b")
    make_vm(platform, "web1")
    return a, b


def interrupted(
    platform: Platform,
    kind: str,
    held: dict[str, str | None],
    *,
    target: tuple[str, str] = ("vm", "web1"),
    params: dict[str, Any] | None = None,
    **vm_changes: Any,
) -> Operation:
    """A running operation of ``kind`` holding each VM in ``held`` (name -> its moving_to)."""
    operation = Operation(
        id=str(uuid.uuid4()),
        kind=kind,
        target_kind=target[0],
        target_name=target[1],
        status=OperationStatus.RUNNING,
        created_at=utcnow(),
        started_at=utcnow(),
        params=params or {},
    )
    with platform.db.session() as session:
        OperationRepo(session).add(operation)
        session.flush()
        repo = VmRepo(session)
        for name, moving_to in held.items():
            vm = repo.get(name)
            vm.active_operation_id, vm.moving_to = operation.id, moving_to
            for key, value in vm_changes.items():
                setattr(vm, key, value)
            repo.save(vm)
    return operation


def prepare(platform: Platform, dest: FakeDriver, name: str = "web1") -> None:
    """What a move does on the destination first: the image and an empty overlay."""
    image = platform.images.get("img")
    vm = platform.vms.get(name)
    platform.images.ensure_on_host(dest, image)
    dest.create_overlay(vm.os_disk.name, guest_boot.image_volume(image, "disk"), image.format, vm.disk_bytes)


def switch_over(platform: Platform, source: FakeDriver, dest: FakeDriver, name: str = "web1") -> None:
    prepare(platform, dest, name)
    source.migrate(name, MigrationRequest(dest_uri=dest.uri))


def assert_interrupted(platform: Platform, operation: Operation) -> None:
    recorded = platform.runner.get(operation.id)
    assert recorded.status is OperationStatus.FAILED
    assert recorded.error is not None and recorded.error["code"] == "Interrupted"


def test_a_move_whose_guest_runs_on_the_destination_switches_the_record(
    platform: Platform, hosts: tuple[FakeDriver, FakeDriver]
) -> None:
    a, b = hosts
    operation = interrupted(platform, "vm.migrate-live", {"web1": "b"}, params={"from": "a", "to": "b"})
    switch_over(platform, a, b)

    report = platform.reconciler.at_start()

    assert report.operations[operation.id] == "state re-read: running"
    assert_interrupted(platform, operation)
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host, vm.moving_to, vm.active_operation_id) == ("b", "b", None, None)
    assert vm.power_state is PowerState.RUNNING
    assert claims(platform, "a") == Allocation() and claims(platform, "b") == Allocation(1, 1024, 4 * GIB)
    assert leftovers(platform, "a") == ["domain web1", "volume web1-os.qcow2", "volume web1.console.log"]
    platform.health.check_all()  # the source answers: what it kept goes
    assert leftovers(platform, "a") == [] and volumes_of(a, "web1") == []
    g = guest(b, "web1")
    assert g is not None and g.state is GuestState.RUNNING and "web1-os.qcow2" in volumes_of(b, "web1")


def test_a_move_whose_guest_never_left_stays_and_the_destination_is_cleaned(
    platform: Platform, hosts: tuple[FakeDriver, FakeDriver]
) -> None:
    a, b = hosts
    operation = interrupted(platform, "vm.migrate-live", {"web1": "b"})
    prepare(platform, b)

    platform.reconciler.at_start()

    assert_interrupted(platform, operation)
    vm = platform.vms.get("web1")
    assert (vm.host, vm.disk_host, vm.moving_to, vm.active_operation_id) == ("a", "a", None, None)
    assert claims(platform, "b") == Allocation()
    # The domain too: a cold move may have defined it there (removing one that is not there is harmless).
    assert leftovers(platform, "b") == ["domain web1", "volume web1-os.qcow2", "volume web1.console.log"]
    platform.health.check_all()
    assert volumes_of(b, "web1") == [] and leftovers(platform, "b") == []
    g = guest(a, "web1")
    assert g is not None and g.state is GuestState.RUNNING and volumes_of(a, "web1") == VOLUMES


def test_a_cold_move_cut_after_the_define_leaves_nothing_on_the_destination(
    platform: Platform, hosts: tuple[FakeDriver, FakeDriver]
) -> None:
    """A stopped VM's cold move had defined the guest on b when the server died: the record stays
    on a, and b's copy (disk and definition) is cleaned up, or it would block the next move there."""
    a, b = hosts
    run(platform, platform.vms.stop("web1"))
    operation = interrupted(platform, "vm.migrate-cold", {"web1": "b"})
    prepare(platform, b)
    image = platform.images.get("img")
    b.define(guest_boot.guest_spec(platform.vms.get("web1"), image, platform.hosts.get("b").accelerator))

    platform.reconciler.at_start()
    platform.health.check_all()

    assert_interrupted(platform, operation)
    vm = platform.vms.get("web1")
    assert (vm.host, vm.moving_to, vm.power_state) == ("a", None, PowerState.STOPPED)
    assert volumes_of(b, "web1") == []
    assert "web1" not in b.host.guests, "the definition on b is left behind"


def test_an_interrupted_drain_settles_each_move_and_releases_every_vm(
    platform: Platform, hosts: tuple[FakeDriver, FakeDriver]
) -> None:
    a, b = hosts
    make_vm(platform, "web2")
    operation = interrupted(platform, "host.drain", {"web1": "b", "web2": "b"}, target=("host", "a"))
    switch_over(platform, a, b, "web1")  # web1 had moved; web2 had not started

    report = platform.reconciler.at_start()

    assert report.operations[operation.id] == "marked failed; moves: web1 on b; web2 on a"
    assert_interrupted(platform, operation)
    web1, web2 = platform.vms.get("web1"), platform.vms.get("web2")
    assert (web1.host, web1.moving_to, web2.host, web2.moving_to) == ("b", None, "a", None)
    assert (web1.active_operation_id, web2.active_operation_id) == (None, None), "still held by a dead drain"
    run(platform, platform.mover.migrate("web2", "b"))
    assert platform.vms.get("web2").host == "b"


def test_an_interrupted_hot_resize_is_recorded_at_the_guests_shape(
    platform: Platform, hosts: tuple[FakeDriver, FakeDriver]
) -> None:
    """resize() claims the new vCPUs and memory at request time; the server died before the guest
    was touched. The record (and the host's claims) must go back to what the guest has."""
    a, _b = hosts
    params = {"from": "Standard_B1s", "to": "Standard_B2s", "path": "hot", "destination": None}
    params |= {"from_vcpus": 1, "from_memory_mib": 1024}
    operation = interrupted(platform, "vm.resize", {"web1": None}, params=params, vcpus=2, memory_mib=4096)

    platform.reconciler.at_start()

    assert_interrupted(platform, operation)
    vm = platform.vms.get("web1")
    info = a.guest_info("web1")
    assert info is not None and (info.vcpus, info.memory_kib) == (1, 1024 * 1024)
    assert (vm.size, vm.vcpus, vm.memory_mib, vm.active_operation_id) == ("Standard_B1s", 1, 1024, None)
    assert claims(platform, "a") == Allocation(1, 1024, 4 * GIB)
