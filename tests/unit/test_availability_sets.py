"""Availability sets on a platform of fake hosts: create, layout, delete, and the spread that VM
creates in a set keep.

Pins: fault-domain counts outside 1-32 refused naming the field; three VMs in a 3-domain set on
three hosts land one per domain, and the layout says so (fault domain -> host -> VMs); hosts
grouped by fault_domain count as one; a set whose domains are full refuses the next VM with a
reason per host; a set with VMs cannot be deleted; a deallocated member keeps its domain.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from flexvm.config import Settings
from flexvm.errors import AlreadyExists, CapacityError, Conflict, InvalidInput, NotFound
from flexvm.platform import Platform
from tests.unit.pool_helpers import add_host, pool_settings, run


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    return pool_settings(tmp_path, db_url)


def create_in_set(platform: Platform, name: str, set_name: str = "web", **kwargs: object) -> None:
    run(platform, platform.vms.create(name, "Standard_B1s", "img", availability_set=set_name, **kwargs))  # type: ignore[arg-type]


def domains_used(platform: Platform, set_name: str = "web") -> dict[str, int]:
    layout = platform.availability_sets.layout(set_name).domains
    return {domain: sum(len(vms) for vms in hosts.values()) for domain, hosts in layout.items()}


# --- create and delete ------------------------------------------------------------------------


def test_a_fault_domain_count_outside_1_to_32_or_a_bad_name_is_refused(platform: Platform) -> None:
    for count in (0, -1, 33, 1000):
        with pytest.raises(InvalidInput) as caught:
            platform.availability_sets.create("web", count)
        assert caught.value.field == "fault_domains"
        assert "between 1 and 32" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        platform.availability_sets.create("web set", 2)
    assert caught.value.field == "name"
    assert platform.availability_sets.list() == []
    assert platform.availability_sets.create("one", 1).fault_domains == 1
    assert platform.availability_sets.create("many", 32).fault_domains == 32
    assert [(s.name, s.fault_domains) for s in platform.availability_sets.list()] == [("many", 32), ("one", 1)]
    with pytest.raises(AlreadyExists):
        platform.availability_sets.create("one", 3)


def test_a_vm_in_an_unknown_set_is_refused_and_nothing_is_made(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    with pytest.raises(NotFound) as caught:
        platform.vms.create("web1", "Standard_B1s", image, availability_set="nope")
    assert caught.value.details == {"kind": "availability set", "name": "nope"}
    assert platform.vms.list() == []


def test_a_set_with_vms_cannot_be_deleted_until_they_are_gone(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    platform.availability_sets.create("web", 1)  # one domain: both may share host a
    create_in_set(platform, "web0")
    create_in_set(platform, "web1")
    run(platform, platform.vms.deallocate("web1"))
    # Deallocated members are listed apart, under the host that keeps their disk.
    assert platform.availability_sets.layout("web").domains == {
        "a": {"a": ["web0"]},
        "(deallocated)": {"a": ["web1"]},
    }
    with pytest.raises(Conflict) as caught:
        platform.availability_sets.delete("web")
    assert caught.value.details == {"vms": ["web0", "web1"]}
    assert "web0, web1" in caught.value.message
    run(platform, platform.vms.delete("web0"))
    run(platform, platform.vms.delete("web1"))
    platform.availability_sets.delete("web")
    assert platform.availability_sets.list() == []
    with pytest.raises(NotFound):
        platform.availability_sets.delete("web")


# --- layout and spread ----------------------------------------------------------------------------


def test_three_vms_in_a_three_domain_set_land_one_per_host(platform: Platform, image: str) -> None:
    for name in ("a", "b", "c"):
        add_host(platform, name)
    platform.availability_sets.create("web", 3)
    for i in range(3):
        create_in_set(platform, f"web{i}")
    layout = platform.availability_sets.layout("web")
    assert layout.availability_set.fault_domains == 3
    assert sorted(layout.domains) == ["a", "b", "c"]
    for domain, hosts in layout.domains.items():
        assert list(hosts) == [domain]  # a host without a fault domain is its own
        assert len(hosts[domain]) == 1
    members = sorted(vm for hosts in layout.domains.values() for vms in hosts.values() for vm in vms)
    assert members == ["web0", "web1", "web2"]
    # VMs outside the set are packed as usual (best fit: the equal hosts by name), not spread.
    for i in range(2):
        run(platform, platform.vms.create(f"other{i}", "Standard_B1s", image))
    assert {platform.vms.get(f"other{i}").host for i in range(2)} == {"a"}
    assert platform.availability_sets.layout("web").domains == layout.domains


def test_grouped_hosts_are_one_fault_domain(platform: Platform, image: str) -> None:
    add_host(platform, "a1", fault_domain="rack-a")
    add_host(platform, "a2", fault_domain="rack-a")
    add_host(platform, "b1", fault_domain="rack-b")
    platform.availability_sets.create("web", 2)
    for i in range(4):
        create_in_set(platform, f"web{i}")
    assert domains_used(platform) == {"rack-a": 2, "rack-b": 2}
    layout = platform.availability_sets.layout("web").domains
    assert set(layout["rack-a"]) <= {"a1", "a2"} and set(layout["rack-b"]) == {"b1"}


def test_a_set_never_uses_more_domains_than_it_has(platform: Platform, image: str) -> None:
    for name in ("a", "b", "c", "d"):
        add_host(platform, name)
    platform.availability_sets.create("web", 2)
    for i in range(6):
        create_in_set(platform, f"web{i}")
    assert sorted(domains_used(platform).values()) == [3, 3]


def test_a_set_whose_domains_are_full_refuses_the_next_vm_with_the_reasons(platform: Platform, image: str) -> None:
    # Each host holds exactly one Standard_B1s by memory: (1536 - 512) x 1.0 = 1 GiB.
    for name in ("a", "b", "c"):
        add_host(platform, name, memory_mib=1536)
    platform.availability_sets.create("web", 2)
    create_in_set(platform, "web0")
    create_in_set(platform, "web1")
    used = set(domains_used(platform))
    (spare,) = {"a", "b", "c"} - used
    with pytest.raises(CapacityError) as caught:
        platform.vms.create("web2", "Standard_B1s", image, availability_set="web")
    reasons = caught.value.details["hosts"]
    assert set(reasons) == {"a", "b", "c"}
    assert reasons[spare] == (
        f"availability set web already uses all of its 2 fault domains ({', '.join(sorted(used))})"
    )
    for name in used:
        assert reasons[name] == "needs 1G memory, 0B free"
    assert sorted(vm.name for vm in platform.vms.list()) == ["web0", "web1"]
    # Outside the set the spare host is fine.
    run(platform, platform.vms.create("other", "Standard_B1s", image))
    assert platform.vms.get("other").host == spare


def test_a_pinned_vm_in_a_set_still_obeys_the_spread(platform: Platform, image: str) -> None:
    for name in ("a", "b"):
        add_host(platform, name)
    platform.availability_sets.create("web", 2)
    create_in_set(platform, "web0", host="a")
    with pytest.raises(CapacityError) as caught:
        platform.vms.create("web1", "Standard_B1s", image, availability_set="web", host="a")
    assert (
        caught.value.details["hosts"]["a"]
        == "fault domain a already holds 1 of availability set web's VMs (its share is 1)"
    )


def test_a_deallocated_member_keeps_its_fault_domain(platform: Platform, image: str) -> None:
    """A deallocated VM's disk stays on its host, so when it starts again it is back in that
    domain: the set must go on counting it there, or it ends up in more domains than it has."""
    for name in ("a", "b", "c"):
        add_host(platform, name)
    platform.availability_sets.create("web", 2)
    create_in_set(platform, "web0", host="a")
    create_in_set(platform, "web1", host="b")
    run(platform, platform.vms.deallocate("web1"))
    # With web1 counted on b, c is a third domain and must be refused for the set.
    with contextlib.suppress(CapacityError):
        create_in_set(platform, "web2", host="c")
    run(platform, platform.vms.start("web1"))
    assert len(domains_used(platform)) <= 2, platform.availability_sets.layout("web").domains
