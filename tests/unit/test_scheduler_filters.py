"""The scheduler's filters, weighers and choose() on hand-made host snapshots: no database, no driver.

Pins: each filter's verdict and the words of its reason (state, pin, exclusion, vCPU/memory/disk
short now vs. never, image requirements, availability-set spread with grouped and lone hosts); the
weighers' order (pack, spread, emptiest fault domain first); choose() naming every rejected host.
"""

from __future__ import annotations

import itertools
from collections import Counter
from math import ceil

import pytest

from flexvm.capacity.fit import Allocation
from flexvm.errors import Action, CapacityError, InvalidInput, Remedy
from flexvm.model.host import Accelerator, HostState
from flexvm.model.units import GIB
from flexvm.scheduler import filters, weighers
from flexvm.scheduler.placement import Request, SetSpread, choose, place
from tests.unit.pool_helpers import make_host, snap

SMALL = Request(1, 512, 4 * GIB)


# --- host state, pin, exclusion ------------------------------------------------------------


def test_an_up_host_passes_the_state_filter() -> None:
    assert filters.host_state(snap(make_host()), SMALL) is None


def test_a_down_host_is_refused_with_its_reason() -> None:
    host = make_host(state=HostState.DOWN, state_reason="fake host is unreachable")
    assert filters.host_state(snap(host), SMALL) == "host is down (fake host is unreachable)"


def test_a_host_in_maintenance_is_refused_saying_so() -> None:
    reason = filters.host_state(snap(make_host(state=HostState.MAINTENANCE)), SMALL)
    assert reason == "host is maintenance"


def test_a_pinned_request_refuses_every_other_host() -> None:
    pinned = Request(1, 512, GIB, pinned="h2")
    assert filters.pinned_host(snap(make_host("h2")), pinned) is None
    assert filters.pinned_host(snap(make_host("h1")), pinned) == "the request is pinned to host h2"
    assert filters.pinned_host(snap(make_host("h1")), SMALL) is None


def test_an_excluded_host_is_refused_saying_it_was_excluded() -> None:
    request = Request(1, 512, GIB, excluded=frozenset({"h1"}))
    reason = filters.excluded_host(snap(make_host("h1")), request)
    assert reason is not None and "excluded" in reason
    assert filters.excluded_host(snap(make_host("h2")), request) is None


# --- vCPUs, memory, disk: short now, or larger than the host ever holds ----------------------


def test_vcpus_short_now_says_what_is_free() -> None:
    full = snap(make_host(), Allocation(vcpus=14))
    assert filters.vcpus(full, Request(4, 512, GIB)) == "needs 4 vCPUs, 2 free"
    assert filters.vcpus(full, Request(2, 512, GIB)) is None  # exactly what is free fits


def test_vcpus_larger_than_the_host_ever_holds_says_so() -> None:
    reason = filters.vcpus(snap(make_host()), Request(20, 512, GIB))
    assert reason == "larger than this host can ever hold: needs 20 vCPUs, the host has 16 in all"


def test_an_overcommitted_host_shows_zero_free_not_negative() -> None:
    reason = filters.vcpus(snap(make_host(), Allocation(vcpus=20)), Request(1, 512, GIB))
    assert reason == "needs 1 vCPUs, 0 free"


def test_memory_short_now_and_larger_than_ever() -> None:
    host = make_host()  # (8192 - 512 reserved) x 1.0 = 7.5 GiB
    assert (
        filters.memory(snap(host, Allocation(memory_mib=7168)), Request(1, 1024, GIB)) == "needs 1G memory, 512M free"
    )
    assert (
        filters.memory(snap(host), Request(1, 8192, GIB))
        == "larger than this host can ever hold: needs 8G memory, the host has 7.5G in all"
    )
    assert filters.memory(snap(host), Request(1, 7680, GIB)) is None


def test_disk_short_now_and_larger_than_ever() -> None:
    host = make_host()
    assert (
        filters.disk(snap(host, Allocation(disk_bytes=96 * GIB)), Request(1, 512, 8 * GIB)) == "needs 8G disk, 4G free"
    )
    assert (
        filters.disk(snap(host), Request(1, 512, 200 * GIB))
        == "larger than this host can ever hold: needs 200G disk, the host has 100G in all"
    )


def test_capacity_filters_follow_the_ratios() -> None:
    """A host with 2 CPUs at ratio 3 offers 6 vCPUs; with ram ratio 2, twice its unreserved memory."""
    host = make_host(cpus=2, cpu_ratio=3.0, memory_mib=2560, ram_ratio=2.0)
    assert filters.vcpus(snap(host), Request(6, 512, GIB)) is None
    assert "the host has 6 in all" in (filters.vcpus(snap(host), Request(7, 512, GIB)) or "")
    assert filters.memory(snap(host), Request(1, 4096, GIB)) is None  # (2560 - 512) x 2
    assert "the host has 4G in all" in (filters.memory(snap(host), Request(1, 4097, GIB)) or "")


# --- image requirements --------------------------------------------------------------------


def test_an_image_that_requires_kvm_is_refused_by_a_tcg_host() -> None:
    needs_kvm = Request(1, 512, GIB, requires=frozenset({"kvm"}))
    reason = filters.image_requirements(snap(make_host(accelerator=Accelerator.TCG)), needs_kvm)
    assert reason == "lacks what the image requires: kvm"
    assert filters.image_requirements(snap(make_host(accelerator=Accelerator.KVM)), needs_kvm) is None
    assert filters.image_requirements(snap(make_host(accelerator=Accelerator.TCG)), SMALL) is None


# --- availability-set spread ---------------------------------------------------------------


def in_set(fault_domains: int, members: dict[str, int]) -> Request:
    return Request(1, 512, GIB, spread=SetSpread("web", fault_domains, members))


def test_no_set_no_spread_rule() -> None:
    assert filters.availability_set(snap(make_host()), SMALL) is None


def test_a_set_never_uses_more_fault_domains_than_it_has() -> None:
    reason = filters.availability_set(snap(make_host("h3")), in_set(2, {"h1": 1, "h2": 1}))
    assert reason is not None
    assert reason == "availability set web already uses all of its 2 fault domains (h1, h2)"
    # A domain already in use may take the next one (each then holds ceil(3/2) = 2 at most).
    assert filters.availability_set(snap(make_host("h1")), in_set(2, {"h1": 1, "h2": 1})) is None


def test_no_domain_holds_more_than_its_share_counting_the_new_vm() -> None:
    request = in_set(3, {"h1": 2, "h2": 1, "h3": 1})  # the 5th VM: share ceil(5/3) = 2
    reason = filters.availability_set(snap(make_host("h1")), request)
    assert reason == "fault domain h1 already holds 2 of availability set web's VMs (its share is 2)"
    assert filters.availability_set(snap(make_host("h2")), request) is None


def test_grouped_hosts_are_one_fault_domain_and_a_lone_host_is_its_own() -> None:
    rack_a1 = snap(make_host("a1", fault_domain="rack-a"))
    rack_a2 = snap(make_host("a2", fault_domain="rack-a"))
    lone = snap(make_host("solo"))
    assert (rack_a1.fault_domain, rack_a2.fault_domain, lone.fault_domain) == ("rack-a", "rack-a", "solo")
    request = in_set(2, {"rack-a": 1})  # the 2nd VM: share ceil(2/2) = 1
    reason = filters.availability_set(rack_a2, request)
    assert reason is not None and "fault domain rack-a already holds 1" in reason
    assert filters.availability_set(lone, request) is None


SPREAD_POOLS = {
    "lone hosts": [make_host(f"h{i}") for i in range(5)],
    "racks": [make_host(f"r{i}", fault_domain=f"rack{i % 3}") for i in range(6)],
    "racks and lone hosts": [make_host(f"m{i}", fault_domain="rack-x" if i < 3 else None) for i in range(6)],
}


@pytest.mark.parametrize("pool_name", sorted(SPREAD_POOLS))
@pytest.mark.parametrize("fault_domains", [1, 2, 3])
@pytest.mark.parametrize("policy", ["best-fit", "spread"])
def test_placing_a_set_one_by_one_keeps_the_spread_rules(pool_name: str, fault_domains: int, policy: str) -> None:
    """Place 12 VMs of a set in turn, as creates would: at most F domains, none above ceil(n/F);
    with at least F domains in the pool every VM finds a place."""
    pool = SPREAD_POOLS[pool_name]
    domains_in_pool = {h.fault_domain or h.name for h in pool}
    allocated: Counter[str] = Counter()
    members: Counter[str] = Counter()
    for n in range(1, 13):
        snapshots = [
            snap(h, Allocation(allocated[h.name], allocated[h.name] * 512, allocated[h.name] * GIB)) for h in pool
        ]
        request = in_set(fault_domains, dict(members))
        chosen = choose(snapshots, request, policy=policy).host
        allocated[chosen.name] += 1
        members[chosen.fault_domain or chosen.name] += 1
        assert len(members) <= fault_domains
        assert max(members.values()) <= ceil(n / fault_domains), (n, dict(members))
    assert len(domains_in_pool) >= fault_domains
    assert sum(members.values()) == 12


def test_a_set_asking_for_more_domains_than_the_pool_has_stops_at_the_rule() -> None:
    """3 domains wanted, 2 in the pool: the 3rd VM would put 2 in a domain whose share is 1."""
    pool = [make_host("a"), make_host("b")]
    members: Counter[str] = Counter()
    for _ in range(2):
        chosen = choose([snap(h) for h in pool], in_set(3, dict(members))).host
        members[chosen.name] += 1
    assert members == Counter({"a": 1, "b": 1})
    with pytest.raises(CapacityError) as caught:
        choose([snap(h) for h in pool], in_set(3, dict(members)))
    assert set(caught.value.details["hosts"]) == {"a", "b"}
    assert all("its share is 1" in why for why in caught.value.details["hosts"].values())


# --- weighers ------------------------------------------------------------------------------


def fill(policy: str, count: int, hosts: list[str]) -> list[str]:
    """Place ``count`` small VMs one after another and return where each went."""
    allocated: Counter[str] = Counter()
    placed = []
    for _ in range(count):
        snapshots = [
            snap(make_host(h), Allocation(allocated[h], allocated[h] * 1024, allocated[h] * GIB)) for h in hosts
        ]
        name = choose(snapshots, Request(1, 1024, GIB), policy=policy).host.name
        allocated[name] += 1
        placed.append(name)
    return placed


def test_best_fit_packs_one_host_before_the_next() -> None:
    # 7.5 GiB per host: 7 VMs of 1 GiB fill h-a, then h-b is used.
    assert fill("best-fit", 9, ["h-a", "h-b"]) == ["h-a"] * 7 + ["h-b"] * 2


def test_spread_evens_out_the_hosts() -> None:
    assert Counter(fill("spread", 6, ["h-a", "h-b", "h-c"])) == {"h-a": 2, "h-b": 2, "h-c": 2}


def test_best_fit_and_spread_rank_in_opposite_orders() -> None:
    fuller = snap(make_host("fuller"), Allocation(2, 4096, 10 * GIB))
    empty = snap(make_host("empty"))
    assert weighers.best_fit(fuller, SMALL) < weighers.best_fit(empty, SMALL)
    assert weighers.spread(empty, SMALL) < weighers.spread(fuller, SMALL)


def test_within_a_set_the_emptiest_fault_domain_comes_first_even_against_best_fit() -> None:
    used = snap(make_host("used"), Allocation(2, 4096, 10 * GIB))  # best fit would pick it
    fresh = snap(make_host("fresh"))
    request = in_set(3, {"used": 1})
    assert place([used, fresh], SMALL).name == "used"
    assert place([used, fresh], request).name == "fresh"
    assert place([used, fresh], request, policy="spread").name == "fresh"


def test_between_equally_used_domains_the_inner_weigher_decides() -> None:
    fuller = snap(make_host("fuller"), Allocation(2, 4096, 10 * GIB))
    empty = snap(make_host("empty"))
    request = in_set(2, {"fuller": 1, "empty": 1})  # the 3rd VM: either domain may hold 2
    assert choose([empty, fuller], request).ranked == ["fuller", "empty"]
    assert choose([empty, fuller], request, policy="spread").ranked == ["empty", "fuller"]


# --- choose ----------------------------------------------------------------------------------


def test_choose_lists_every_rejected_host_with_its_reason() -> None:
    pool = [
        snap(make_host("down", state=HostState.DOWN, state_reason="no answer")),
        snap(make_host("full"), Allocation(vcpus=16)),
        snap(make_host("busy"), Allocation(memory_mib=7168)),
        snap(make_host("tiny", cpus=1, memory_mib=1024)),
        snap(make_host("ok")),
    ]
    request = Request(2, 1024, 8 * GIB)
    placement = choose(pool, request)
    assert placement.host.name == "ok"
    assert placement.ranked == ["ok"]
    assert placement.rejected == {
        "down": "host is down (no answer)",
        "full": "needs 2 vCPUs, 0 free",
        "busy": "needs 1G memory, 512M free",
        "tiny": "larger than this host can ever hold: needs 1G memory, the host has 512M in all",
    }
    with pytest.raises(CapacityError) as caught:
        choose(pool[:4], request)
    err = caught.value
    assert err.details["hosts"] == placement.rejected
    for name, why in placement.rejected.items():
        assert f"{name}: {why}" in err.message
    assert "no host can hold 2 vCPUs, 1G memory, 8G disk" in err.message
    assert "Free now:" in err.message


def test_the_first_failing_filter_gives_the_reason() -> None:
    """A down host that is also full says it is down: the decisive reason, read first."""
    host = make_host("h1", state=HostState.DOWN, state_reason="gone")
    with pytest.raises(CapacityError) as caught:
        choose([snap(host, Allocation(vcpus=16))], SMALL)
    assert caught.value.details["hosts"] == {"h1": "host is down (gone)"}


def test_a_pinned_request_names_the_pin_for_other_hosts_and_the_real_reason_for_its_host() -> None:
    pool = [snap(make_host("a")), snap(make_host("b"), Allocation(vcpus=16))]
    with pytest.raises(CapacityError) as caught:
        choose(pool, Request(1, 512, GIB, pinned="b"))
    assert caught.value.details["hosts"] == {"a": "the request is pinned to host b", "b": "needs 1 vCPUs, 0 free"}


def test_no_hosts_at_all_says_to_add_one() -> None:
    with pytest.raises(CapacityError) as caught:
        choose([], SMALL)
    assert caught.value.details == {"hosts": {}, "remedy": {"action": "add_host"}}
    assert caught.value.remedy == Remedy(action=Action.ADD_HOST)


@pytest.mark.parametrize("policy", ["random", "", "BEST-FIT"])
def test_an_unknown_policy_is_invalid_input_naming_policy(policy: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        choose([snap(make_host())], SMALL, policy=policy)
    assert caught.value.field == "policy"
    assert "best-fit" in caught.value.message and "spread" in caught.value.message


def test_choose_does_not_depend_on_the_order_of_the_snapshots() -> None:
    pool = [snap(make_host(n), Allocation(i, i * 700, i * GIB)) for i, n in enumerate(["p", "q", "r", "s"])]
    for policy in ("best-fit", "spread"):
        chosen = {choose(list(order), SMALL, policy=policy).host.name for order in itertools.permutations(pool)}
        assert len(chosen) == 1, policy
