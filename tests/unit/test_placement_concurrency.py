"""Many requests at once on a pool of fake hosts, on SQLite and PostgreSQL: claims are made in the
placing transaction, so the pool is never overfilled, and exactly what fits is accepted.

Pins: 50 concurrent creates on 3 hosts whose ratios allow 4 VMs each: 12 accepted (and all
succeed, 4 on each host, 4 running guests per fake host), 38 refused at request time with
CapacityError naming every host; no host's claims exceed its room; an availability set created
concurrently keeps its spread; 10 creates of one name: one accepted, 9 AlreadyExists; 6 VMs
migrated at once to a host with room for one: one accepted, 5 CapacityError (the migration plans
on an unlocked snapshot and locks its destination only after choosing it, so this holds only
because each unit of work has the database to itself, on PostgreSQL as on SQLite).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import pytest

from flexvm.config import Settings
from flexvm.errors import AlreadyExists, CapacityError
from flexvm.model.guest import GuestState
from flexvm.model.operation import Operation
from flexvm.platform import Platform
from tests.unit.pool_helpers import add_host, pool_settings, room_of, run

HOSTS = ("a", "b", "c")
ATTEMPTS = 50
PER_HOST = 4  # 2 CPUs x cpu_ratio 2 = 4 vCPUs; Standard_B1ls is 1 vCPU, 512M, 4G


@pytest.fixture
def fake_settings(tmp_path: Path, db_url: str) -> Settings:
    """This module's platform has no 'local' host: the pool is exactly the hosts a test adds."""
    return pool_settings(tmp_path, db_url)


def all_at_once(names: list[str], call: Callable[[str], Operation]) -> list[Operation | Exception]:
    """``call`` for every name at once from threads; each outcome is an operation or the error."""
    gate = Barrier(len(names))

    def attempt(name: str) -> Operation | Exception:
        gate.wait(timeout=30)
        try:
            return call(name)
        except Exception as err:  # every outcome is checked below
            return err

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(attempt, names))


def attempt_all(platform: Platform, names: list[str], **create: object) -> list[Operation | Exception]:
    """Create every name at once."""

    def create_one(name: str) -> Operation:
        return platform.vms.create(name, "Standard_B1ls", "img", **create)  # type: ignore[arg-type]

    return all_at_once(names, create_one)


def test_concurrent_creates_never_overfill_the_pool(platform: Platform, image: str) -> None:
    fakes = {name: add_host(platform, name, cpus=2, memory_mib=8192, disk_gib=100, cpu_ratio=2.0) for name in HOSTS}
    assert [room_of(platform, h).vcpus_total for h in HOSTS] == [PER_HOST] * 3

    outcomes = attempt_all(platform, [f"vm{i}" for i in range(ATTEMPTS)])
    accepted = [o for o in outcomes if isinstance(o, Operation)]
    refused = [o for o in outcomes if not isinstance(o, Operation)]
    assert len(accepted) == PER_HOST * len(HOSTS)
    assert len(refused) == ATTEMPTS - len(accepted)
    for err in refused:
        assert isinstance(err, CapacityError), repr(err)
        assert set(err.details["hosts"]) == set(HOSTS)
        assert all("needs 1 vCPUs, 0 free" in why for why in err.details["hosts"].values())

    for operation in accepted:
        run(platform, operation, timeout=30)
    vms = platform.vms.list()
    assert sorted(vm.name for vm in vms) == sorted(op.target_name for op in accepted)
    assert Counter(vm.host for vm in vms) == {h: PER_HOST for h in HOSTS}
    for name in HOSTS:
        room = room_of(platform, name)
        assert room.vcpus_free == 0 and room.memory_mib_free >= 0 and room.disk_bytes_free >= 0
        detail = platform.hosts.detail(name)
        assert detail.allocated.vcpus == PER_HOST
        assert len(detail.vms) == PER_HOST
        running = [g for g in fakes[name].host.guests.values() if g.state is GuestState.RUNNING]
        assert len(running) == PER_HOST
    assert all(
        s.fits_now == 0 for s in platform.sizes.list_with_fit() if s.size.name == "Standard_B1ls"
    )  # the pool is full, and says so


def test_concurrent_creates_in_an_availability_set_keep_its_spread(platform: Platform, image: str) -> None:
    """9 creates at once into a 3-domain set on 3 roomy hosts: 3 per host, never 4."""
    for name in HOSTS:
        add_host(platform, name)
    platform.availability_sets.create("web", 3)
    outcomes = attempt_all(platform, [f"web{i}" for i in range(9)], availability_set="web")
    assert all(isinstance(o, Operation) for o in outcomes), outcomes
    for operation in outcomes:
        assert isinstance(operation, Operation)
        run(platform, operation, timeout=30)
    layout = platform.availability_sets.layout("web").domains
    assert {domain: sum(len(v) for v in hosts.values()) for domain, hosts in layout.items()} == {h: 3 for h in HOSTS}


def test_concurrent_creates_of_one_name_accept_exactly_one(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    outcomes = attempt_all(platform, ["web"] * 10)
    accepted = [o for o in outcomes if isinstance(o, Operation)]
    assert len(accepted) == 1, outcomes
    assert all(isinstance(o, AlreadyExists) for o in outcomes if o is not accepted[0]), outcomes
    run(platform, accepted[0], timeout=30)
    assert [vm.name for vm in platform.vms.list()] == ["web"]


def test_concurrent_migrations_to_a_host_with_room_for_one_accept_exactly_one(platform: Platform, image: str) -> None:
    add_host(platform, "a")
    add_host(platform, "c", cpus=1, cpu_ratio=1.0)  # 1 vCPU: one Standard_B1ls
    names = [f"vm{i}" for i in range(6)]
    for name in names:
        run(platform, platform.vms.create(name, "Standard_B1ls", "img", host="a"))
    outcomes = all_at_once(names, lambda name: platform.mover.migrate(name, to="c"))
    accepted = [o for o in outcomes if isinstance(o, Operation)]
    assert len(accepted) == 1, outcomes
    assert all(isinstance(o, CapacityError) for o in outcomes if o is not accepted[0]), outcomes
    run(platform, accepted[0], timeout=30)
    assert [vm.name for vm in platform.vms.list() if vm.host == "c"] == [accepted[0].target_name]
    assert room_of(platform, "c").vcpus_free == 0
