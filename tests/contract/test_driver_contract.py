"""The Driver contract: what every driver promises, checked the same way on each of them.

Every test runs once per driver (the ``driver`` fixture: the in-memory fake, and libvirt on
qemu:///system with real TCG guests of the built-in tiny image). Where a test has to look
past the protocol (a volume's size), it does so through ``ContractHost``, never by branching
on the driver in the test itself.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from flexvm.drivers.base import Driver
from flexvm.errors import AlreadyExists, HypervisorError, HypervisorUnavailable, InvalidState
from flexvm.model.guest import GuestInfo, GuestState
from flexvm.model.host import Accelerator, AcceleratorChoice
from flexvm.model.units import MIB
from tests.contract.conftest import (
    OVERLAY_BYTES,
    ContractHost,
    Guest,
    GuestFactory,
    console_lines,
    driver_kind,
    tail,
    unreachable_driver,
    wait_for,
)

VERSION = re.compile(r"^\d+\.\d+\.\d+$")
POWEROFF_DEADLINE = 30.0  # the tiny guest syncs and powers off within a second or two of the button
DISK_STATE_DEADLINE = 10.0  # the guest compares its figures every second


def state_of(driver: Driver, name: str) -> GuestState | None:
    info = driver.guest_info(name)
    return None if info is None else info.state


# --------------------------------------------------------------------------- host facts


def test_host_info_reports_plausible_facts(driver: Driver) -> None:
    info = driver.host_info()
    assert info.cpus > 0
    assert info.memory_mib > 0
    assert info.disk_capacity_bytes >= info.disk_available_bytes > 0
    assert VERSION.match(info.libvirt_version), info.libvirt_version
    assert VERSION.match(info.hypervisor_version), info.hypervisor_version


def test_probe_accelerator_without_a_kernel_explains_its_choice(driver: Driver) -> None:
    choice = driver.probe_accelerator(None)
    assert isinstance(choice, AcceleratorChoice)
    assert isinstance(choice.accelerator, Accelerator)
    assert choice.reason.strip()
    # KVM cannot run guests on the machines this suite runs on, and without a kernel to prove
    # it with no driver may claim it anyway.
    assert choice.accelerator is Accelerator.TCG, choice.reason


# --------------------------------------------------------------------------- storage


def test_image_volume_upload_has_and_delete(contract_host: ContractHost, tmp_path: Path) -> None:
    driver = contract_host.driver
    volume = contract_host.name("image") + ".raw"
    source = tmp_path / "payload.raw"
    source.write_bytes(secrets.token_bytes(64 * 1024))

    assert driver.has_image_volume(volume) is False
    driver.upload_image_volume(volume, source)
    assert driver.has_image_volume(volume) is True
    driver.delete_image_volume(volume)
    assert driver.has_image_volume(volume) is False
    driver.delete_image_volume(volume)  # a missing volume is not an error


def test_shared_storage_is_checked_and_its_volumes_are_seen_by_another_connection(
    contract_host: ContractHost, tmp_path: Path
) -> None:
    driver = contract_host.driver
    missing = contract_host.missing_store()
    with pytest.raises(HypervisorError, match=re.escape(missing.path)):
        driver.check_storage(missing)
    store = contract_host.shared_store()
    try:
        driver.check_storage(store)
        source = tmp_path / "marker"
        source.write_bytes(b"written by one connection")
        driver.upload_instance_volume("marker", source, store=store)
        other = contract_host.second_connection()
        assert other.console_read("marker", 0, store=store) == b"written by one connection"
        assert driver.console_read("marker", 0) == b"", "the host's own pool does not hold it"
        other.delete_instance_volume("marker", store=store)
        assert driver.console_read("marker", 0, store=store) == b""
        other.close()
    finally:
        contract_host.forget_store(store)
        contract_host.forget_store(missing)


def test_an_image_volume_backing_a_disk_is_not_deleted(contract_host: ContractHost, tmp_path: Path) -> None:
    driver = contract_host.driver
    image = contract_host.name("backing") + ".raw"
    overlay = contract_host.name("user") + ".qcow2"
    source = tmp_path / "backing.raw"
    source.write_bytes(secrets.token_bytes(1 * MIB))
    try:
        driver.upload_image_volume(image, source)
        driver.create_overlay(overlay, image, "raw", 4 * MIB)

        with pytest.raises(InvalidState):
            driver.delete_image_volume(image)
        assert driver.has_image_volume(image) is True

        driver.delete_instance_volume(overlay)
        driver.delete_image_volume(image)  # no disk uses it any more
        assert driver.has_image_volume(image) is False
    finally:
        driver.delete_instance_volume(overlay)
        driver.delete_image_volume(image)


def test_overlay_needs_an_existing_backing_volume(booting_host: ContractHost) -> None:
    driver = booting_host.driver
    overlay = booting_host.name("orphan") + ".qcow2"
    missing = booting_host.name("no-such-image") + ".disk"

    with pytest.raises(HypervisorError):
        driver.create_overlay(overlay, missing, "qcow2", OVERLAY_BYTES)
    assert overlay not in driver.list_instance_volumes(), "a refused overlay must leave nothing behind"


def test_overlay_is_listed_grows_offline_and_is_deleted(booting_host: ContractHost) -> None:
    driver = booting_host.driver
    assert booting_host.boot is not None
    overlay = booting_host.name("overlay") + ".qcow2"
    grown = OVERLAY_BYTES + 32 * MIB
    try:
        driver.create_overlay(overlay, booting_host.boot.disk, "qcow2", OVERLAY_BYTES)
        assert overlay in driver.list_instance_volumes()
        assert booting_host.instance_volume_bytes(overlay) == OVERLAY_BYTES

        driver.resize_instance_volume(overlay, grown, guest=None)
        assert booting_host.instance_volume_bytes(overlay) == grown
    finally:
        driver.delete_instance_volume(overlay)
    assert overlay not in driver.list_instance_volumes()
    driver.delete_instance_volume(overlay)  # a second delete is not an error


def test_overlay_refuses_a_name_in_use(booting_host: ContractHost) -> None:
    driver = booting_host.driver
    assert booting_host.boot is not None
    overlay = booting_host.name("taken") + ".qcow2"
    try:
        driver.create_overlay(overlay, booting_host.boot.disk, "qcow2", OVERLAY_BYTES)
        with pytest.raises(HypervisorError):
            driver.create_overlay(overlay, booting_host.boot.disk, "qcow2", OVERLAY_BYTES + 32 * MIB)
        assert booting_host.instance_volume_bytes(overlay) == OVERLAY_BYTES, "a refused create must not touch it"
    finally:
        driver.delete_instance_volume(overlay)


def test_offline_resize_refuses_to_shrink(booting_host: ContractHost) -> None:
    driver = booting_host.driver
    assert booting_host.boot is not None
    overlay = booting_host.name("shrink") + ".qcow2"
    try:
        driver.create_overlay(overlay, booting_host.boot.disk, "qcow2", OVERLAY_BYTES)
        with pytest.raises(HypervisorError):
            driver.resize_instance_volume(overlay, OVERLAY_BYTES - 16 * MIB, guest=None)
        assert booting_host.instance_volume_bytes(overlay) == OVERLAY_BYTES
    finally:
        driver.delete_instance_volume(overlay)


# --------------------------------------------------------------------------- definitions


def test_define_reads_back_the_spec(guests: GuestFactory) -> None:
    driver = guests.host.driver
    guest = guests.define("define")

    info = driver.guest_info(guest.name)
    assert info is not None
    assert info.name == guest.name
    assert info.state is GuestState.SHUTOFF
    assert info.persistent is True
    assert info.vm_id == guest.spec.vm_id
    assert info.uuid == guest.spec.uuid
    assert info.vcpus == 1
    assert info.memory_kib == 256 * 1024
    assert guest.name in [g.name for g in driver.list_guests()]


def test_define_refuses_a_name_in_use(guests: GuestFactory) -> None:
    driver = guests.host.driver
    guest = guests.define("twice")

    with pytest.raises(AlreadyExists):
        driver.define(guest.spec)  # the very same spec: libvirt alone would quietly redefine it
    other = guests.host.spec(guest.name, guest.overlay)  # same name, another uuid and vm id
    with pytest.raises(AlreadyExists):
        driver.define(other)
    info = driver.guest_info(guest.name)
    assert info is not None and info.vm_id == guest.spec.vm_id, "a refused define must not change the guest"


def test_a_guest_whose_disk_is_missing_cannot_run(guests: GuestFactory) -> None:
    """Refused at define (the fake) or at start (libvirt): either way with flexvm's error."""
    host = guests.host
    name = host.name("diskless")
    guests.names.append(name)  # removed at teardown whatever happens
    spec = host.spec(name, f"{name}.qcow2")  # that overlay was never created
    with pytest.raises(HypervisorError):
        host.driver.define(spec)
        host.driver.start(name)
    assert state_of(host.driver, name) in (None, GuestState.SHUTOFF)


def test_guest_info_of_an_unknown_name_is_none(contract_host: ContractHost) -> None:
    assert contract_host.driver.guest_info(contract_host.name("nobody")) is None


# --------------------------------------------------------------------------- a running guest


def test_started_guest_runs_and_reports_ready(running_guest: Guest, booting_host: ContractHost) -> None:
    driver = booting_host.driver
    assert state_of(driver, running_guest.name) is GuestState.RUNNING
    running = [g for g in driver.list_guests() if g.name == running_guest.name]
    assert [g.state for g in running] == [GuestState.RUNNING]

    ready = console_lines(driver.console_read(running_guest.log), "ready")
    assert len(ready) == 1, tail(driver.console_read(running_guest.log))
    assert ready[0].get("name") == running_guest.name
    assert ready[0].get("cpus") == "1"
    assert ready[0].get("disk_bytes") == str(running_guest.overlay_bytes)


def test_guest_info_is_a_guest_info(running_guest: Guest, driver: Driver) -> None:
    info = driver.guest_info(running_guest.name)
    assert isinstance(info, GuestInfo)
    assert info.vcpus == 1 and info.memory_kib == 256 * 1024
    assert info.vm_id == running_guest.spec.vm_id


def test_starting_a_running_guest_is_refused(running_guest: Guest, driver: Driver) -> None:
    with pytest.raises(HypervisorError):
        driver.start(running_guest.name)
    assert state_of(driver, running_guest.name) is GuestState.RUNNING


def test_console_read_from_an_offset_returns_only_the_rest(running_guest: Guest, driver: Driver) -> None:
    whole = driver.console_read(running_guest.log)
    assert b"flexvm: ready" in whole
    offset = whole.index(b"flexvm: ready")
    rest = driver.console_read(running_guest.log, offset)
    # The guest may print more meanwhile, but nothing before the offset may come back.
    assert rest.startswith(whole[offset:]), (rest[:200], whole[offset:][:200])
    assert rest.startswith(b"flexvm: ready")
    assert driver.console_read(running_guest.log, len(whole) + 1_000_000) == b""


def test_console_read_of_a_missing_log_is_empty(contract_host: ContractHost) -> None:
    assert contract_host.driver.console_read(contract_host.name("nolog") + ".console.log") == b""


def test_online_disk_grow_reaches_the_guest(guests: GuestFactory) -> None:
    host = guests.host
    guest = guests.booted("grow")
    grown = guest.overlay_bytes + 32 * MIB

    host.driver.resize_instance_volume(guest.overlay, grown, guest=guest.name)
    host.wait_console(guest, "state", timeout=DISK_STATE_DEADLINE, match=lambda f: f.get("disk_bytes") == str(grown))
    assert host.instance_volume_bytes(guest.overlay) == grown
    assert state_of(host.driver, guest.name) is GuestState.RUNNING


def test_online_resize_refuses_to_shrink(guests: GuestFactory) -> None:
    """A disk only grows, online as offline: shrinking a running guest's disk cuts off its data."""
    host = guests.host
    guest = guests.define("shrink-online")
    host.driver.start(guest.name)  # QEMU holding the disk is enough; no need to wait for the guest
    smaller = guest.overlay_bytes - 16 * MIB

    with pytest.raises(HypervisorError):
        host.driver.resize_instance_volume(guest.overlay, smaller, guest=guest.name)
    assert host.instance_volume_bytes(guest.overlay) == guest.overlay_bytes


def test_online_resize_of_a_stopped_guest_is_refused(guests: GuestFactory) -> None:
    """``guest=`` means "grow it under this running guest"; a guest that is off cannot take that,
    so the caller learns it (and can grow offline) rather than getting a silent offline grow."""
    host = guests.host
    guest = guests.define("grow-stopped")

    with pytest.raises(HypervisorError):
        host.driver.resize_instance_volume(guest.overlay, guest.overlay_bytes + 32 * MIB, guest=guest.name)
    assert host.instance_volume_bytes(guest.overlay) == guest.overlay_bytes
    assert host.driver.console_read(guest.log) == b"", "a guest that is off prints nothing"


# --------------------------------------------------------------------------- lifecycle


def test_shutdown_powers_off_and_a_restart_appends_to_the_console(guests: GuestFactory) -> None:
    host = guests.host
    driver = host.driver
    guest = guests.booted("cycle")

    driver.shutdown(guest.name)  # returns without waiting; the guest powers itself off
    wait_for(
        f"{guest.name} to power off",
        lambda: state_of(driver, guest.name) is GuestState.SHUTOFF,
        POWEROFF_DEADLINE,
        interval=0.2,
    )
    output = driver.console_read(guest.log)
    assert console_lines(output, "poweroff"), f"no 'flexvm: poweroff' on the console:\n{tail(output)}"

    driver.destroy(guest.name)  # already off: not an error
    assert state_of(driver, guest.name) is GuestState.SHUTOFF

    driver.start(guest.name)
    assert state_of(driver, guest.name) is GuestState.RUNNING
    second = host.wait_console(guest, "ready", nth=2)
    output = driver.console_read(guest.log)
    assert len(console_lines(output, "ready")) == 2, tail(output)
    assert second.get("boots") == "2", f"the second boot should count 2 boots on a kept disk: {second}"


def test_destroy_stops_a_running_guest_at_once_then_undefine_forgets_it(guests: GuestFactory) -> None:
    driver = guests.host.driver
    guest = guests.define("destroy")
    driver.start(guest.name)
    assert state_of(driver, guest.name) is GuestState.RUNNING

    driver.destroy(guest.name)
    assert state_of(driver, guest.name) is GuestState.SHUTOFF  # at once, no waiting

    driver.undefine(guest.name)
    assert driver.guest_info(guest.name) is None
    assert guest.name not in [g.name for g in driver.list_guests()]
    driver.undefine(guest.name)  # a missing guest is not an error


def test_undefine_of_a_running_guest_is_refused(guests: GuestFactory) -> None:
    """Only a stopped guest's definition may be forgotten (libvirt itself would quietly turn a
    running one transient, so that it vanishes for good at its next stop)."""
    driver = guests.host.driver
    guest = guests.define("undefine-running")
    driver.start(guest.name)

    with pytest.raises(HypervisorError):
        driver.undefine(guest.name)
    info = driver.guest_info(guest.name)
    assert info is not None
    assert info.state is GuestState.RUNNING
    assert info.persistent is True, "the guest lost its definition while running (it is transient now)"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("operation", ["start", "shutdown", "resize_instance_volume"])
def test_refusals_are_flexvm_errors(contract_host: ContractHost, operation: str) -> None:
    driver = contract_host.driver
    name = contract_host.name("ghost")
    calls = {
        "start": lambda: driver.start(name),
        "shutdown": lambda: driver.shutdown(name),
        "resize_instance_volume": lambda: driver.resize_instance_volume(f"{name}.qcow2", 128 * MIB, guest=None),
    }
    with pytest.raises(HypervisorError) as caught:
        calls[operation]()
    # Not a libvirt.libvirtError (nor anything else) escaping the boundary.
    assert type(caught.value).__module__ == "flexvm.errors"


@pytest.mark.parametrize(
    "method", ["host_info", "list_guests", "guest_info", "list_instance_volumes", "has_image_volume", "console_read"]
)
def test_an_unreachable_host_raises_unavailable_naming_its_uri(driver: Driver, method: str) -> None:
    unreachable = unreachable_driver(driver_kind(driver))
    calls = {
        "host_info": lambda: unreachable.host_info(),
        "list_guests": lambda: unreachable.list_guests(),
        "guest_info": lambda: unreachable.guest_info("ct-nobody"),
        "list_instance_volumes": lambda: unreachable.list_instance_volumes(),
        "has_image_volume": lambda: unreachable.has_image_volume("ct-nothing"),
        "console_read": lambda: unreachable.console_read("ct-nothing.console.log"),
    }
    try:
        with pytest.raises(HypervisorUnavailable) as caught:
            calls[method]()
    finally:
        unreachable.close()
    assert unreachable.uri in str(caught.value)
