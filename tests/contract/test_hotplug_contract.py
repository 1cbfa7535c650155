"""The hot-resize contract: a running guest's vCPUs and memory change without a restart.

Every test runs once per driver (see ``conftest.py``). The guests here are defined with ceilings
(1 vCPU of at most 4; 256 MiB, at most 1024 MiB in 4 DIMM slots) and booted once per module; each
test reads the guest's current shape first, so it does not depend on the tests before it.

What a test sees of the guest is its console: the tiny image prints ``flexvm: state cpus=N
mem_kib=N ...`` whenever its online CPUs or MemTotal change (the fake prints the same line when it
is changed). Every test ends by checking that the guest never restarted: still running, one
readiness line, ``boots=1``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from flexvm.errors import HypervisorError
from flexvm.model.guest import GuestInfo, GuestState, MemoryStats
from tests.contract.conftest import (
    BOOT_DEADLINE,
    OVERLAY_BYTES,
    ContractHost,
    Guest,
    GuestFactory,
    console_lines,
    tail,
    wait_for,
)

MAX_VCPUS = 4
MEMORY_MIB = 256
MAX_MEMORY_MIB = 1024
MEMORY_SLOTS = 4
DIMM_MIB = 256

# The tiny guest compares its figures every second; TCG on a loaded 2-core box needs slack.
STATE_DEADLINE = 20.0
BALLOON_DEADLINE = 30.0
STATS_DEADLINE = 30.0  # the balloon reports every 5 s (<stats period='5'/>)
MEMTOTAL_SLACK_KIB = 8 * 1024  # a hot-added DIMM shows in MemTotal whole; allow for rounding
BALLOON_SLACK_KIB = 4 * 1024


# --------------------------------------------------------------------------- helpers


def boot_resizable(factory: GuestFactory, tag: str, *, slots: int = MEMORY_SLOTS) -> Guest:
    """Define and boot a guest with hot-plug ceilings; removed with the factory's other guests."""
    host = factory.host
    assert host.boot is not None
    name = host.name(tag)
    factory.names.append(name)  # removed at teardown whatever happens next
    overlay = f"{name}.qcow2"
    host.driver.create_overlay(overlay, host.boot.disk, "qcow2", OVERLAY_BYTES)
    spec = dataclasses.replace(
        host.spec(name, overlay),
        vcpus=1,
        memory_mib=MEMORY_MIB,
        max_vcpus=MAX_VCPUS,
        max_memory_mib=MAX_MEMORY_MIB,
        memory_slots=slots,
    )
    host.driver.define(spec)
    guest = Guest(spec, overlay, OVERLAY_BYTES)
    host.driver.start(name)
    host.wait_console(guest, "ready", timeout=BOOT_DEADLINE)
    return guest


def info_of(host: ContractHost, guest: Guest) -> GuestInfo:
    info = host.driver.guest_info(guest.name)
    assert info is not None, f"{guest.name} vanished"
    return info


def console_offset(host: ContractHost, guest: Guest) -> int:
    return len(host.driver.console_read(guest.log))


def last_mem_kib(host: ContractHost, guest: Guest) -> int:
    """MemTotal as the guest last reported it (its latest state line, else its readiness line)."""
    output = host.driver.console_read(guest.log)
    reports = console_lines(output, "ready") + console_lines(output, "state")
    # Lines of both kinds interleave in time; the state lines all come after the one ready line.
    latest = [f for f in reports if "mem_kib" in f][-1]
    return int(latest["mem_kib"])


def wait_state(
    host: ContractHost, guest: Guest, offset: int, what: str, match: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    """The first ``flexvm: state`` line printed after ``offset`` that ``match`` accepts."""
    seen = {"output": b""}

    def found() -> dict[str, str] | None:
        output = host.driver.console_read(guest.log, offset)
        seen["output"] = output
        hits = [f for f in console_lines(output, "state") if match(f)]
        if hits:
            return hits[0]
        assert info_of(host, guest).state is GuestState.RUNNING, f"{guest.name} stopped while waiting for {what}"
        return None

    try:
        return wait_for(f"{what} on {guest.name}'s console", found, STATE_DEADLINE)
    except AssertionError as err:
        raise AssertionError(f"{err}; console since the change:\n{tail(seen['output'])}") from None


def assert_not_restarted(host: ContractHost, guest: Guest) -> None:
    """Still the first boot: running, one readiness line, and that line counted one boot."""
    assert info_of(host, guest).state is GuestState.RUNNING
    output = host.driver.console_read(guest.log)
    ready = console_lines(output, "ready")
    assert len(ready) == 1, f"{guest.name} printed {len(ready)} readiness lines (it restarted):\n{tail(output)}"
    assert ready[0].get("boots") == "1", ready[0]


def plug_vcpus(host: ContractHost, guest: Guest, vcpus: int) -> None:
    offset = console_offset(host, guest)
    host.driver.set_vcpus(guest.name, vcpus)
    wait_state(host, guest, offset, f"'cpus={vcpus}'", lambda f: f.get("cpus") == str(vcpus))
    assert info_of(host, guest).vcpus == vcpus


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resizable(module_guests: GuestFactory) -> Iterator[Guest]:
    """One booted guest with ceilings per driver, shared by this module's tests."""
    yield boot_resizable(module_guests, "resize")


# --------------------------------------------------------------------------- tests


def test_guest_info_reports_the_ceilings(booting_host: ContractHost, resizable: Guest) -> None:
    info = info_of(booting_host, resizable)
    assert info.max_vcpus == MAX_VCPUS
    assert info.max_memory_kib == MAX_MEMORY_MIB * 1024
    assert 1 <= info.vcpus <= MAX_VCPUS
    assert_not_restarted(booting_host, resizable)


def test_a_plugged_vcpu_comes_online_in_the_guest(booting_host: ContractHost, resizable: Guest) -> None:
    host = booting_host
    before = info_of(host, resizable).vcpus
    assert before < MAX_VCPUS, f"{resizable.name} already has {MAX_VCPUS} vCPUs; nothing left to plug"

    plug_vcpus(host, resizable, before + 1)
    assert_not_restarted(host, resizable)


def test_unplugging_a_vcpu_is_done_or_refused_leaving_a_healthy_guest(
    booting_host: ContractHost, resizable: Guest
) -> None:
    """Unplug either reaches the guest, or is refused up front with the guest left as it was.

    The libvirt driver refuses it for a running TCG guest: QEMU 7.2 removes the vCPU but never
    tells libvirt, and the next plug then crashes QEMU. Either way the guest must take a vCPU
    afterwards and keep running, which is what that crash would break.
    """
    host = booting_host
    if info_of(host, resizable).vcpus < 2:
        plug_vcpus(host, resizable, 2)
    before = info_of(host, resizable).vcpus
    offset = console_offset(host, resizable)

    try:
        host.driver.set_vcpus(resizable.name, before - 1)
    except HypervisorError as err:
        assert "unplug" in str(err), err
        assert info_of(host, resizable).vcpus == before
        assert not console_lines(host.driver.console_read(resizable.log, offset), "state"), "refused, yet changed"
    else:
        wait_state(host, resizable, offset, f"'cpus={before - 1}'", lambda f: f.get("cpus") == str(before - 1))
        assert info_of(host, resizable).vcpus == before - 1

    now = info_of(host, resizable).vcpus
    plug_vcpus(host, resizable, now + 1)
    assert_not_restarted(host, resizable)


def test_a_dimm_adds_its_size_to_the_guests_memory(booting_host: ContractHost, resizable: Guest) -> None:
    host = booting_host
    memory_before = info_of(host, resizable).memory_kib
    memtotal_before = last_mem_kib(host, resizable)
    offset = console_offset(host, resizable)
    grown = DIMM_MIB * 1024

    host.driver.attach_memory(resizable.name, DIMM_MIB)
    line = wait_state(
        host,
        resizable,
        offset,
        f"mem_kib about {memtotal_before + grown}",
        lambda f: abs(int(f.get("mem_kib", 0)) - (memtotal_before + grown)) <= MEMTOTAL_SLACK_KIB,
    )
    assert int(line["mem_kib"]) > memtotal_before
    assert info_of(host, resizable).memory_kib >= memory_before + grown - MEMTOTAL_SLACK_KIB
    assert_not_restarted(host, resizable)


def test_the_balloon_takes_memory_back_and_gives_it_again(booting_host: ContractHost, resizable: Guest) -> None:
    host = booting_host
    plugged_mib = host.driver.memory_stats(resizable.name).actual_kib // 1024
    target_mib = plugged_mib - 128  # the tiny guest uses ~30 MiB; 128 MiB less leaves it plenty

    def actual_near(mib: int) -> bool:
        return abs(host.driver.memory_stats(resizable.name).actual_kib - mib * 1024) <= BALLOON_SLACK_KIB

    host.driver.set_memory_target(resizable.name, target_mib)
    try:
        wait_for(
            f"the balloon to leave {resizable.name} {target_mib} MiB",
            lambda: actual_near(target_mib),
            BALLOON_DEADLINE,
            interval=0.2,
        )
        wait_for(
            f"guest_info to show {target_mib} MiB",
            lambda: abs(info_of(host, resizable).memory_kib - target_mib * 1024) <= BALLOON_SLACK_KIB,
            BALLOON_DEADLINE,
            interval=0.2,
        )

        def reported() -> MemoryStats | None:
            stats = host.driver.memory_stats(resizable.name)
            return stats if stats.available_kib is not None else None

        stats = wait_for("the guest's own memory figures", reported, STATS_DEADLINE, interval=0.5)
        assert stats.used_kib is not None and 0 < stats.used_kib < target_mib * 1024
    finally:
        host.driver.set_memory_target(resizable.name, plugged_mib)
    wait_for(
        f"the balloon to give {resizable.name} its {plugged_mib} MiB back",
        lambda: actual_near(plugged_mib),
        BALLOON_DEADLINE,
        interval=0.2,
    )
    assert_not_restarted(host, resizable)


def test_requests_outside_the_ceilings_are_refused(booting_host: ContractHost, resizable: Guest) -> None:
    host = booting_host
    driver = host.driver
    name = resizable.name
    before = info_of(host, resizable)
    plugged_mib = driver.memory_stats(name).actual_kib // 1024
    offset = console_offset(host, resizable)
    refused = {
        "no vCPU at all": lambda: driver.set_vcpus(name, 0),
        "past the vCPU ceiling": lambda: driver.set_vcpus(name, MAX_VCPUS + 1),
        "past the memory ceiling": lambda: driver.attach_memory(name, MAX_MEMORY_MIB),
        "a balloon target above what is plugged": lambda: driver.set_memory_target(name, plugged_mib + 128),
        "a balloon target of nothing": lambda: driver.set_memory_target(name, 0),
    }
    for what, call in refused.items():
        with pytest.raises(HypervisorError) as caught:
            call()
        assert type(caught.value).__module__ == "flexvm.errors", what
        assert str(caught.value).strip(), what

    after = info_of(host, resizable)
    assert (after.vcpus, after.memory_kib) == (before.vcpus, before.memory_kib)
    assert not console_lines(driver.console_read(resizable.log, offset), "state"), "a refused request changed it"
    assert_not_restarted(host, resizable)


def test_a_dimm_needs_a_free_slot(guests: GuestFactory) -> None:
    host = guests.host
    guest = boot_resizable(guests, "slots", slots=2)
    for _ in range(2):
        host.driver.attach_memory(guest.name, 128)
    plugged = info_of(host, guest).memory_kib

    with pytest.raises(HypervisorError):
        host.driver.attach_memory(guest.name, 128)  # within the ceiling, but both slots are taken
    assert info_of(host, guest).memory_kib == plugged
    assert_not_restarted(host, guest)


def test_resizing_an_unknown_guest_is_a_flexvm_error(contract_host: ContractHost) -> None:
    name = contract_host.name("ghost")
    for call in (
        lambda: contract_host.driver.set_vcpus(name, 2),
        lambda: contract_host.driver.attach_memory(name, 128),
        lambda: contract_host.driver.set_memory_target(name, 128),
        lambda: contract_host.driver.memory_stats(name),
    ):
        with pytest.raises(HypervisorError) as caught:
            call()
        assert type(caught.value).__module__ == "flexvm.errors"
