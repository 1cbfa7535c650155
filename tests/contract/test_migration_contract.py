"""The migration contract: ``Driver.migrate`` moves a running guest to another host, or leaves it
running where it was.

The checks every driver must pass run twice, parametrised over ``fake`` (two in-memory hosts) and
``lab`` (two libvirt hosts of a real lab, ``lab_fixtures.migration_lab``, with TCG guests of the
tiny image bridged onto the lab switch). The rest needs real guests and runs on the lab only:
the guest's console ticks on without a gap across the move, it answers HTTP at the same reserved
address, its disk writes arrive, and a migration that loses its destination, or runs out of time,
leaves it running on the source.

Order matters within the module (one lab, guests shared between tests): the idle guest moves
once (``moved``) and is looked at by the tests after it; the busy guest stays on host 1 through
the failure tests, and moves last. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from flexvm.drivers.base import Driver
from flexvm.drivers.fake import FakeDriver
from flexvm.errors import HypervisorError, HypervisorUnavailable, OperationTimeout
from flexvm.model.guest import (
    BootKernel,
    GuestDisk,
    GuestNic,
    GuestSpec,
    GuestState,
    MigrationProgress,
    MigrationRequest,
    MigrationResult,
)
from flexvm.model.host import Accelerator
from flexvm.model.units import MIB
from tests.contract.conftest import wait_for
from tests.contract.lab_fixtures import (
    READY,
    TICK,
    LabGuest,
    MigrationLab,
    fields,
    migration_lab_fixture,  # noqa: F401 - the migration_lab fixture
    ticks,
    via_lab,
)

PHASES = {"copying", "auto-converge", "post-copy", "switching over"}
CONVERGED_BY = {"plain", "auto-converge", "post-copy"}
TICK_SLACK = 1.0  # a tick may come at most this much later than 1 s after the one before
BUSY_MIB = 256  # what the busy guest keeps rewriting (the /dirty cap)
BUSY_MEMORY_MIB = 512
DIRTY_SECONDS = 25
DIRTY_PATIENCE = DIRTY_SECONDS + 60.0  # the /dirty answer, on a loaded machine
DIRTY_FILL_DEADLINE = 60.0  # filling 256 MiB with random pages takes a few seconds under TCG
DIRTY = re.compile(r"flexvm: dirty mib=")
SHUTDOWN_DEADLINE = 60.0
FIGURES: dict[str, str] = {}


def figure(name: str, value: str, record: Callable[[str, object], None] | None = None) -> None:
    FIGURES[name] = value
    print(f"\n[migration figure] {name}: {value}")
    if record is not None:
        record(name, value)


# --------------------------------------------------------------------------- both drivers


@dataclass
class Moved:
    """One guest moved from ``source`` to ``dest``, and what the move reported."""

    kind: str
    source: Driver
    dest: Driver
    name: str
    memory_mib: int
    result: MigrationResult
    progress: list[MigrationProgress]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakePair:
    source: FakeDriver
    dest: FakeDriver
    name: str


def fake_pair(tag: str) -> FakePair:
    """Two in-memory hosts with the image volumes on both, a guest running on the first and its
    disk's overlay pre-created on the second."""
    hosts = [FakeDriver.for_uri(f"fake://migration-{tag}-{i}-{secrets.token_hex(3)}") for i in (1, 2)]
    name = f"mig-{tag}"
    spec = GuestSpec(
        name=name,
        uuid=f"00000000-0000-4000-8000-{secrets.token_hex(6)}",
        vm_id=f"vm-{name}",
        vcpus=1,
        memory_mib=256,
        accelerator=Accelerator.TCG,
        disks=(GuestDisk(f"{name}.qcow2"),),
        nics=(GuestNic("52:54:00:00:00:01", "bridge", "br0"),),
        kernel=BootKernel("tiny.kernel", "tiny.initrd", "console=ttyS0"),
        console_log=f"{name}.console.log",
    )
    scratch = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part, size in (("kernel", 4096), ("initrd", 2048), ("qcow2", 8192)):
            path = Path(tmp) / f"tiny.{part}"
            path.write_bytes(secrets.token_bytes(size))
            scratch[part] = path
        for host in hosts:
            for part, path in scratch.items():
                host.upload_image_volume(f"tiny.{part}", path)
            host.create_overlay(f"{name}.qcow2", "tiny.qcow2", "qcow2", 96 * MIB)
    hosts[0].define(spec)
    hosts[0].start(name)
    return FakePair(hosts[0], hosts[1], name)


@pytest.fixture(scope="module")
def moved_on_fake() -> Moved:
    pair = fake_pair("moved")
    seen: list[MigrationProgress] = []
    result = pair.source.migrate(pair.name, MigrationRequest(dest_uri=pair.dest.uri), seen.append)
    return Moved("fake", pair.source, pair.dest, pair.name, 256, result, seen)


@pytest.fixture(scope="module")
def idle_guest(migration_lab: MigrationLab) -> LabGuest:
    return migration_lab.boot("idle")


@pytest.fixture(scope="module")
def moved_in_lab(
    migration_lab: MigrationLab, idle_guest: LabGuest, record_testsuite_property: Callable[[str, object], None]
) -> Moved:
    """The idle guest, having written to its disk, moved from host 1 to host 2 with its storage."""
    lab, guest = migration_lab, idle_guest
    token = secrets.token_hex(8)
    assert lab.get(guest, f"/note?text={token}").status_code == 200
    before = lab.info(guest)
    seen: list[MigrationProgress] = []
    started = time.monotonic()
    result = lab.drivers[0].migrate(guest.name, lab.request(1, max_seconds=120.0), seen.append)
    wall = time.monotonic() - started
    figure("idle guest (256 MiB): total s / downtime ms", f"{result.total_seconds:.2f} / {result.downtime_ms}")
    figure(
        "idle guest: memory / disk moved (MiB), converged by",
        f"{result.memory_bytes / MIB:.1f} / {result.disk_bytes / MIB:.2f}, {result.converged_by}",
    )
    record_testsuite_property("migration idle total_seconds", f"{result.total_seconds:.2f}")
    record_testsuite_property("migration idle downtime_ms", str(result.downtime_ms))
    extra = {"guest": guest, "token": token, "before": before, "wall": wall}
    return Moved("lab", lab.drivers[0], lab.drivers[1], guest.name, 256, result, seen, extra)


@pytest.fixture(scope="module", params=["fake", "lab"])
def moved(request: pytest.FixtureRequest) -> Moved:
    return request.getfixturevalue(f"moved_{'on_fake' if request.param == 'fake' else 'in_lab'}")


def test_the_guest_ends_running_and_persistent_on_the_destination_only(moved: Moved) -> None:
    there = moved.dest.guest_info(moved.name)
    assert there is not None, f"{moved.name} is not on the destination"
    assert there.state is GuestState.RUNNING
    assert there.persistent, "PERSIST_DEST: the destination must keep its definition"
    assert moved.source.guest_info(moved.name) is None, "UNDEFINE_SOURCE: the source must forget it"
    assert moved.name in {g.name for g in moved.dest.list_guests()}


def test_the_result_has_the_downtime_and_totals(moved: Moved) -> None:
    result = moved.result
    assert result.total_seconds >= 0
    assert result.downtime_ms is not None and result.downtime_ms > 0
    assert result.memory_bytes > 0
    assert result.disk_bytes > 0, "the guest's disk was copied, so some of it moved"
    assert result.converged_by in CONVERGED_BY
    if moved.kind == "lab":
        # The switch-over is a pause, not a stop: well under the time the whole move took.
        assert result.downtime_ms < result.total_seconds * 1000
        assert result.total_seconds <= moved.extra["wall"] + 0.5


def test_progress_was_reported_with_totals(moved: Moved) -> None:
    seen = moved.progress
    assert seen, "progress was never called"
    assert all(p.phase in PHASES for p in seen), {p.phase for p in seen}
    elapsed = [p.elapsed_seconds for p in seen]
    assert elapsed == sorted(elapsed)
    with_memory = [p for p in seen if p.memory_total > 0]
    assert with_memory, "no report gave the memory total"
    assert all(p.memory_total >= moved.memory_mib * MIB for p in with_memory)
    assert all(p.memory_processed >= 0 and p.memory_remaining >= 0 for p in seen)
    assert any(p.disk_total > 0 for p in seen), "no report gave the disk total"


@pytest.fixture(params=["fake", "lab"])
def running_here(request: pytest.FixtureRequest) -> Iterator[tuple[str, Driver, str, Callable[[], str]]]:
    """(kind, source driver, guest name, a destination URI that cannot be reached)."""
    if request.param == "fake":
        pair = fake_pair("unreachable")
        pair.dest.host.reachable = False
        yield "fake", pair.source, pair.name, lambda: pair.dest.uri
        return
    lab: MigrationLab = request.getfixturevalue("migration_lab")
    guest: LabGuest = request.getfixturevalue("busy_guest")
    # Host 2's own address, on a port nothing listens on: refused at once, inside the lab.
    address = via_lab(lab.state.hosts[1].address)
    yield "lab", lab.drivers[0], guest.name, lambda: f"qemu+tcp://{address}:1/system"


def test_an_unreachable_destination_leaves_the_guest_running_here(
    running_here: tuple[str, Driver, str, Callable[[], str]],
) -> None:
    kind, source, name, dest_uri = running_here
    with pytest.raises(HypervisorError) as caught:
        source.migrate(name, MigrationRequest(dest_uri=dest_uri(), max_seconds=60.0))
    assert dest_uri() in caught.value.message or kind == "fake"
    info = source.guest_info(name)
    assert info is not None and info.state is GuestState.RUNNING and info.persistent
    if kind == "lab":
        assert isinstance(caught.value, HypervisorUnavailable), caught.value.message
        assert "could not reach the destination" in caught.value.message
        assert caught.value.details["state_on_source"] == "running", caught.value.details


# --------------------------------------------------------------------------- the lab: the idle guest


def test_the_console_ticks_on_across_the_move_without_a_gap_or_reset(
    moved_in_lab: Moved, migration_lab: MigrationLab
) -> None:
    lab, guest = migration_lab, moved_in_lab.extra["guest"]
    before = lab.console(guest, 0)
    last_before = ticks(before)[-1].number
    # A few ticks from the destination; the two logs joined in order (a line the switch-over cut
    # in two is whole again).
    lab.wait_console(guest, 1, TICK, nth=3, timeout=30)
    joined = before + lab.console(guest, 1)
    seen = ticks(joined)
    numbers = [t.number for t in seen]
    assert numbers == list(range(1, len(numbers) + 1)), "ticks missing, repeated or restarted"
    assert numbers[-1] >= last_before + 3
    steps = [b.uptime - a.uptime for a, b in zip(seen, seen[1:], strict=False)]
    assert min(steps) > 0, "the guest's uptime went backwards: it restarted"
    worst = max(steps)
    assert worst <= 1.0 + TICK_SLACK, f"a gap of {worst:.2f} s between two ticks"
    assert len(READY.findall(joined)) == 1, "a second readiness line: the guest rebooted"
    across = seen[last_before - 1 : last_before + 1]
    figure("tick step across the move (guest s)", f"{across[1].uptime - across[0].uptime:.2f}")


def test_http_answers_at_the_same_address_and_uptime_continues(
    moved_in_lab: Moved, migration_lab: MigrationLab
) -> None:
    lab, guest = migration_lab, moved_in_lab.extra["guest"]
    assert lab.get(guest, "/").text.strip() == guest.name
    after = lab.info(guest)
    before = moved_in_lab.extra["before"]
    assert after["ip"] == guest.address == before["ip"]
    assert after["name"] == guest.name
    assert float(after["uptime"]) > float(before["uptime"])
    assert after["boots"] == before["boots"] == "1"
    assert lab.get(guest, "/note").text.strip() == moved_in_lab.extra["token"]


def test_postcopy_is_skipped_cleanly_where_the_destination_cannot_do_it(
    moved_in_lab: Moved, migration_lab: MigrationLab
) -> None:
    """The move allowed post-copy. A destination whose QEMU cannot use userfaultfd (this lab's: QEMU
    7.2 as an unprivileged user with vm.unprivileged_userfaultfd=0) refuses it; the driver then
    moves the guest without it and stops asking that host."""
    from flexvm.drivers.libvirt import migration

    refused = migration.postcopy_refused_by(migration_lab.uri(1))
    figure("post-copy on lab host 2", "refused by its QEMU: moved without it" if refused else "available")
    if refused:
        assert moved_in_lab.result.converged_by != "post-copy"


def test_the_destination_disk_holds_what_the_guest_wrote(moved_in_lab: Moved, migration_lab: MigrationLab) -> None:
    """A cold boot on host 2 reads its disk: the note and the boot counter written on host 1 are there."""
    lab, guest = migration_lab, moved_in_lab.extra["guest"]
    dest = lab.drivers[1]
    # Still an overlay on the image volume: only the top layer moved.
    assert guest.overlay in dest.storage.overlays_on(lab.volumes["disk"])  # type: ignore[attr-defined]
    dest.shutdown(guest.name)
    wait_for(f"{guest.name} to power off", lambda: lab.hosts_running(guest).get(1) is GuestState.SHUTOFF, 60)
    dest.start(guest.name)
    ready = fields(lab.wait_console(guest, 1, READY, nth=1)[1])
    assert ready["boots"] == "2", "the boot counter written on host 1 did not reach host 2's disk"
    assert ready["ip"] == guest.address
    lab.wait_http(guest)
    assert lab.get(guest, "/note").text.strip() == moved_in_lab.extra["token"]


# --------------------------------------------------------------------------- the lab: a busy guest


class Dirtier:
    """A ``/dirty`` request running in a thread: the guest rewrites memory while it is answered."""

    def __init__(self, lab: MigrationLab, guest: LabGuest, host: int = 0, seconds: int = DIRTY_SECONDS) -> None:
        # The console line the guest prints when it starts rewriting, counted on this host.
        self.nth = len(DIRTY.findall(lab.console(guest, host))) + 1
        self.url = lab.url(guest, f"/dirty?mib={BUSY_MIB}&seconds={seconds}")
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name="dirtier", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=DIRTY_PATIENCE, trust_env=False) as client:
                self.response = client.get(self.url, headers={"Connection": "close"})
        except Exception as err:  # noqa: BLE001 - reported by finish()
            self.error = err

    def finish(self) -> dict[str, str]:
        self.thread.join(DIRTY_PATIENCE)
        assert not self.thread.is_alive(), "/dirty did not answer in time"
        assert self.error is None, f"/dirty failed: {self.error!r}"
        assert self.response is not None and self.response.status_code == 200, self.response
        return fields(self.response.text)


def wait_busy(lab: MigrationLab, guest: LabGuest, dirtier: Dirtier, host: int = 0) -> None:
    """Until the guest has filled its buffer and is rewriting it (its console says so)."""
    lab.wait_console(guest, host, DIRTY, nth=dirtier.nth, timeout=DIRTY_FILL_DEADLINE)


def assert_still_running_on_host_1(lab: MigrationLab, guest: LabGuest) -> None:
    where = lab.hosts_running(guest, hosts=(0,))  # host 2 may be down
    assert where.get(0) is GuestState.RUNNING, f"{guest.name} is not running on host 1: {where}"
    assert lab.persistent_on(guest, 0)
    assert lab.get(guest, "/").text.strip() == guest.name
    # Its console goes on ticking there.
    count = len(ticks(lab.console(guest, 0)))
    lab.wait_console(guest, 0, TICK, nth=count + 1, timeout=30)


def no_guest_on(lab: MigrationLab, guest: LabGuest, host: int, timeout: float = 60.0) -> None:
    what = f"host {host + 1} to drop the half-made {guest.name}"
    wait_for(what, lambda: host not in lab.hosts_running(guest), timeout)


@pytest.fixture(scope="module")
def busy_guest(migration_lab: MigrationLab) -> LabGuest:
    return migration_lab.boot("busy", memory_mib=BUSY_MEMORY_MIB)


def test_a_destination_dying_mid_way_leaves_the_guest_running_on_the_source(
    migration_lab: MigrationLab, busy_guest: LabGuest
) -> None:
    lab, guest = migration_lab, busy_guest
    lab.fresh_overlay(guest, 1)
    dirtier = Dirtier(lab, guest)
    wait_busy(lab, guest, dirtier)
    killed: list[MigrationProgress] = []

    def kill_the_destination(p: MigrationProgress) -> None:
        if not killed and p.memory_total > 0:  # memory is on its way: well into the migration
            killed.append(p)
            lab.lab.stop_host("lab2")

    try:
        with pytest.raises(HypervisorError) as caught:
            lab.drivers[0].migrate(
                guest.name, lab.request(1, max_seconds=120.0, max_downtime_ms=10), kill_the_destination
            )
        assert killed, f"the migration ended before the destination could be killed: {caught.value.message}"
        assert lab.uri(1) in caught.value.message
        assert caught.value.details["state_on_source"] == "running", caught.value.details
        figure("destination killed at (s) / error", f"{killed[0].elapsed_seconds:.2f} / {caught.value.message}")
        assert_still_running_on_host_1(lab, guest)
        assert dirtier.finish()["mib"] == str(BUSY_MIB), "the guest's work did not survive"
    finally:
        lab.lab.start_host("lab2")
    no_guest_on(lab, guest, 1)


def test_a_migration_out_of_time_is_aborted_and_the_guest_stays(
    migration_lab: MigrationLab, busy_guest: LabGuest, record_testsuite_property: Callable[[str, object], None]
) -> None:
    lab, guest = migration_lab, busy_guest
    lab.fresh_overlay(guest, 1)
    token = secrets.token_hex(8)
    assert lab.get(guest, f"/note?text={token}").status_code == 200
    dirtier = Dirtier(lab, guest)
    wait_busy(lab, guest, dirtier)
    seen: list[MigrationProgress] = []
    max_seconds = 1.5
    started = time.monotonic()
    with pytest.raises(OperationTimeout) as caught:
        lab.drivers[0].migrate(
            guest.name,
            lab.request(1, max_seconds=max_seconds, max_downtime_ms=10, allow_postcopy=False),
            seen.append,
        )
    took = time.monotonic() - started
    figure("busy guest out of time: deadline / aborted and wound down after (s)", f"{max_seconds} / {took:.2f}")
    record_testsuite_property("migration abort wind-down seconds", f"{took:.2f}")
    assert took >= max_seconds
    assert seen and max(p.elapsed_seconds for p in seen) < max_seconds + 1.0, "progress went on after the abort"
    assert "aborted" in caught.value.message
    assert caught.value.details["state_on_source"] == "running", caught.value.details
    assert_still_running_on_host_1(lab, guest)
    no_guest_on(lab, guest, 1)
    dirtier.finish()
    # Its disk is intact: a cold boot on host 1 reads back the note written before the attempt.
    lab.drivers[0].shutdown(guest.name)
    wait_for(f"{guest.name} to power off", lambda: lab.hosts_running(guest).get(0) is GuestState.SHUTOFF, 60)
    lab.drivers[0].start(guest.name)
    assert fields(lab.wait_console(guest, 0, READY, nth=2)[1])["boots"] == "2"
    lab.wait_http(guest)
    assert lab.get(guest, "/note").text.strip() == token


def test_a_busy_guest_moves_too(
    migration_lab: MigrationLab, busy_guest: LabGuest, record_testsuite_property: Callable[[str, object], None]
) -> None:
    """For the figures. Only where it ends is checked, not the guest's health after: QEMU 7.2 under
    TCG loses memory writes made while they are tracked for migration (see migration.py), so a guest
    rewriting memory as hard as this one may arrive corrupted."""
    lab, guest = migration_lab, busy_guest
    lab.fresh_overlay(guest, 1)
    dirtier = Dirtier(lab, guest)
    wait_busy(lab, guest, dirtier)
    seen: list[MigrationProgress] = []
    result = lab.drivers[0].migrate(guest.name, lab.request(1, max_seconds=120.0), seen.append)
    figure(
        f"busy guest ({BUSY_MEMORY_MIB} MiB, rewriting {BUSY_MIB} MiB): total s / downtime ms / converged by",
        f"{result.total_seconds:.2f} / {result.downtime_ms} / {result.converged_by}",
    )
    figure("busy guest: memory moved (MiB)", f"{result.memory_bytes / MIB:.0f}")
    record_testsuite_property("migration busy total_seconds", f"{result.total_seconds:.2f}")
    record_testsuite_property("migration busy downtime_ms", str(result.downtime_ms))
    assert lab.hosts_running(guest) == {1: GuestState.RUNNING}
    assert result.downtime_ms is not None and result.memory_bytes > BUSY_MIB * MIB
    assert {p.phase for p in seen} <= PHASES
    dirtier.thread.join(DIRTY_PATIENCE)  # whatever it answers: see the docstring
    print("\n[migration figures]\n" + "\n".join(f"  {k}: {v}" for k, v in FIGURES.items()))
