"""Capacity arithmetic and host placement: pure functions over hosts and what is claimed on them.

Pins: room under overcommit ratios and reserved memory, reasons that name what is short, shapes a
host can never hold, how many of a size fit, and placement's choice (best fit) or its refusal
(every host with its reason, and what is free).
"""

from __future__ import annotations

import dataclasses

import pytest

from flexvm.capacity.fit import Allocation, Room, how_many_fit, never_fits, room_on, why_not
from flexvm.errors import CapacityError, InvalidInput
from flexvm.model.host import Host, HostState
from flexvm.model.sizes import Size
from flexvm.model.units import GIB, MIB
from flexvm.scheduler.placement import HostSnapshot, Request, place, rejection
from tests.unit.pool_helpers import NOTHING, make_host, snap


def snapshot(host: Host, allocated: Allocation = NOTHING) -> HostSnapshot:
    return snap(host, allocated)


# --- room ----------------------------------------------------------------------------------


def test_room_applies_ratios_and_reserved_memory() -> None:
    room = room_on(make_host(), Allocation())
    # 4 CPUs x 4.0, (8192 - 512 reserved) x 1.0, 100G x 1.0
    assert (room.vcpus_total, room.memory_mib_total, room.disk_bytes_total) == (16, 7680, 100 * GIB)
    assert (room.vcpus_free, room.memory_mib_free, room.disk_bytes_free) == (16, 7680, 100 * GIB)


def test_room_with_other_ratios_rounds_down() -> None:
    host = make_host(cpus=3, cpu_ratio=1.5, memory_mib=4096, ram_ratio=1.5, reserved_memory_mib=1000, disk_ratio=0.5)
    room = room_on(host, Allocation())
    assert room.vcpus_total == 4  # floor(4.5)
    assert room.memory_mib_total == 4644  # floor(3096 x 1.5)
    assert room.disk_bytes_total == 50 * GIB


def test_room_uses_what_a_host_advertises_over_what_libvirt_counts() -> None:
    room = room_on(make_host(advertised_cpus=2, advertised_memory_mib=2560), Allocation())
    assert (room.vcpus_total, room.memory_mib_total) == (8, 2048)


def test_room_subtracts_what_is_allocated() -> None:
    room = room_on(make_host(), Allocation(vcpus=5, memory_mib=2048, disk_bytes=30 * GIB))
    assert (room.vcpus_free, room.memory_mib_free, room.disk_bytes_free) == (11, 5632, 70 * GIB)


def test_describe_free_reads_well_and_never_shows_negative() -> None:
    room = room_on(make_host(), Allocation(vcpus=4, memory_mib=9000, disk_bytes=120 * GIB))
    text = room.describe_free()
    assert text == "12 of 16 vCPUs, 0B of 7.5G memory, 0B of 100G disk free"


# --- why_not and never_fits ----------------------------------------------------------------


def test_a_shape_that_fits_has_no_reason() -> None:
    room = room_on(make_host(), Allocation())
    assert why_not(room, 2, 4096, 16 * GIB) is None
    # Exactly what is free still fits.
    assert why_not(room, 16, 7680, 100 * GIB) is None


def test_why_not_names_only_what_is_short() -> None:
    room = room_on(make_host(), Allocation(vcpus=14))
    assert why_not(room, 4, 512, GIB) == "needs 4 vCPUs, 2 free"
    room = room_on(make_host(), Allocation(memory_mib=7168))
    assert why_not(room, 1, 1024, GIB) == "needs 1G memory, 512M free"
    room = room_on(make_host(), Allocation(disk_bytes=96 * GIB))
    assert why_not(room, 1, 512, 8 * GIB) == "needs 8G disk, 4G free"


def test_why_not_lists_every_shortage() -> None:
    room = room_on(make_host(), Allocation(vcpus=16, memory_mib=7680, disk_bytes=100 * GIB))
    reason = why_not(room, 1, 512, GIB)
    assert reason == "needs 1 vCPUs, 0 free; needs 512M memory, 0B free; needs 1G disk, 0B free"


def test_overcommitted_room_reports_zero_free_not_negative() -> None:
    room = room_on(make_host(), Allocation(vcpus=20))
    assert why_not(room, 1, 512, GIB) == "needs 1 vCPUs, 0 free"


def test_never_fits_ignores_what_is_allocated() -> None:
    full = room_on(make_host(), Allocation(vcpus=16, memory_mib=7680, disk_bytes=100 * GIB))
    assert never_fits(full, 16, 7680, 100 * GIB) is None
    assert (
        never_fits(full, 17, 512, GIB) == "larger than this host can ever hold: needs 17 vCPUs, the host has 16 in all"
    )
    assert never_fits(full, 1, 8192, GIB) == (
        "larger than this host can ever hold: needs 8G memory, the host has 7.5G in all"
    )


def test_a_shape_larger_than_the_host_says_so() -> None:
    room = room_on(make_host(), Allocation(vcpus=4))
    assert why_not(room, 20, 512, GIB) == "larger than this host can ever hold: needs 20 vCPUs, the host has 16 in all"


def test_needing_none_of_a_resource_is_never_short_even_when_overcommitted() -> None:
    # The host's CPU ratio was lowered below what its VMs hold: 20 vCPUs allocated of 16.
    room = room_on(make_host(), Allocation(vcpus=20))
    assert why_not(room, 0, 0, GIB) is None  # growing a disk, or moving a deallocated VM's disk
    assert rejection(snapshot(make_host(), Allocation(vcpus=20)), Request(0, 0, GIB)) is None


@pytest.mark.parametrize(
    ("allocated", "shape"),
    [
        (Allocation(vcpus=14), (4, 512, GIB)),
        (Allocation(memory_mib=7168), (1, 1024, GIB)),
        (Allocation(disk_bytes=96 * GIB), (1, 512, 8 * GIB)),
        (Allocation(), (1, 8192, GIB)),
        (Allocation(vcpus=20), (1, 512, GIB)),
    ],
)
def test_the_scheduler_and_the_services_say_it_in_one_wording(
    allocated: Allocation, shape: tuple[int, int, int]
) -> None:
    """``why_not`` (what services ask of one host) and the filters are one rule."""
    host = make_host()
    assert rejection(snapshot(host, allocated), Request(*shape)) == why_not(room_on(host, allocated), *shape)


# --- how many fit --------------------------------------------------------------------------


def size(vcpus: int, memory_mib: int, disk_gib: int) -> Size:
    return Size("s", vcpus, memory_mib, disk_gib * GIB, "test", builtin=False)


def test_how_many_fit_is_bounded_by_the_scarcest_resource() -> None:
    room = room_on(make_host(), Allocation())
    assert how_many_fit(room, size(1, 512, 4)) == 15  # memory: 7680 // 512
    assert how_many_fit(room, size(4, 256, 1)) == 4  # vCPUs: 16 // 4
    assert how_many_fit(room, size(1, 256, 30)) == 3  # disk: 100 // 30


def test_how_many_fit_falls_with_allocation_and_never_goes_negative() -> None:
    host = make_host()
    assert how_many_fit(room_on(host, Allocation(memory_mib=7680 - 1024)), size(1, 512, 4)) == 2
    assert how_many_fit(room_on(host, Allocation(memory_mib=10_000)), size(1, 512, 4)) == 0


# --- placement -----------------------------------------------------------------------------

SMALL = Request(1, 512, 4 * GIB)


def test_place_picks_the_only_host_that_fits() -> None:
    assert place([snapshot(make_host("h1"))], SMALL).name == "h1"


@pytest.mark.parametrize("state", [HostState.DOWN, HostState.MAINTENANCE])
def test_a_host_not_up_is_rejected_with_its_state_and_reason(state: HostState) -> None:
    host = make_host("h1", state=state, state_reason="libvirtd does not answer")
    assert rejection(snapshot(host), SMALL) == f"host is {state.value} (libvirtd does not answer)"
    with pytest.raises(CapacityError) as caught:
        place([snapshot(host)], SMALL)
    assert caught.value.details["hosts"] == {"h1": f"host is {state.value} (libvirtd does not answer)"}


def test_a_down_host_is_skipped_for_one_that_is_up() -> None:
    down = make_host("a-down", state=HostState.DOWN)
    assert place([snapshot(down), snapshot(make_host("b-up"))], SMALL).name == "b-up"


def test_best_fit_prefers_the_fuller_host() -> None:
    empty = snapshot(make_host("empty"))
    fuller = snapshot(make_host("fuller"), Allocation(vcpus=2, memory_mib=4096, disk_bytes=10 * GIB))
    assert place([empty, fuller], SMALL).name == "fuller"
    assert place([fuller, empty], SMALL).name == "fuller"


def test_best_fit_skips_a_fuller_host_that_cannot_take_it() -> None:
    empty = snapshot(make_host("empty"))
    too_full = snapshot(make_host("too-full"), Allocation(memory_mib=7500))
    assert place([too_full, empty], SMALL).name == "empty"


def test_best_fit_ties_break_on_vcpus_then_name() -> None:
    a = snapshot(make_host("a"), Allocation(vcpus=1))
    b = snapshot(make_host("b"), Allocation(vcpus=8))
    assert place([a, b], SMALL).name == "b"
    assert place([snapshot(make_host("y")), snapshot(make_host("x"))], SMALL).name == "x"


def test_spread_prefers_the_emptier_host() -> None:
    empty = snapshot(make_host("empty"))
    fuller = snapshot(make_host("fuller"), Allocation(vcpus=2, memory_mib=4096, disk_bytes=10 * GIB))
    assert place([fuller, empty], SMALL, policy="spread").name == "empty"


def test_an_unknown_policy_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        place([snapshot(make_host())], SMALL, policy="random")
    assert caught.value.field == "policy"


def test_capacity_error_lists_every_host_with_its_reason_and_what_is_free() -> None:
    down = make_host("h-down", state=HostState.DOWN, state_reason="unreachable")
    full = make_host("h-full")
    small = make_host("h-small", cpus=1, memory_mib=1024)
    request = Request(2, 1024, 8 * GIB)
    with pytest.raises(CapacityError) as caught:
        place([snapshot(down), snapshot(full, Allocation(memory_mib=7680)), snapshot(small)], request)
    err = caught.value
    assert err.status == 409
    assert err.details["hosts"] == {
        "h-down": "host is down (unreachable)",
        "h-full": "needs 1G memory, 0B free",
        "h-small": "larger than this host can ever hold: needs 1G memory, the host has 512M in all",
    }
    assert err.message.startswith("no host can hold 2 vCPUs, 1G memory, 8G disk")
    for name, reason in err.details["hosts"].items():
        assert f"{name}: {reason}" in err.message
    assert "Free now:" in err.message
    assert "h-full: 16 of 16 vCPUs, 0B of 7.5G memory, 100G of 100G disk free" in err.message


def test_empty_pool_says_to_add_a_host() -> None:
    with pytest.raises(CapacityError, match="no hosts are registered") as caught:
        place([], SMALL)
    assert "flexvm" not in caught.value.message
    assert caught.value.details == {"hosts": {}, "remedy": {"action": "add_host"}}


def test_request_describe() -> None:
    assert Request(2, 1536, 16 * GIB).describe() == "2 vCPUs, 1.5G memory, 16G disk"
    assert Request(1, 512, 64 * MIB).describe() == "1 vCPUs, 512M memory, 64M disk"


def test_room_is_a_value() -> None:
    # Snapshots are immutable: placement cannot change what it was given.
    room = Room(1, 2, 3, 1, 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        room.vcpus_free = 0  # type: ignore[misc]
