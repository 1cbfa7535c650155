"""Placement speed and packing quality, each against a baseline measured in the same run.

1. Decisions per second at 100, 1,000 and 10,000 hosts:
   - flexvm's scheduler (every filter with its reasons, then the best-fit weigher) on snapshots,
     against the same best-fit choice written as one bare loop (the least a scheduler can cost);
   - a whole placement transaction as `vm create` runs it: the pool read from SQLite (hosts
     locked, allocations summed), the choice, the VM row and its claim written.
2. Packing on a stream of creates and deletes with an Azure-like mix of sizes: hosts in use by
   best fit and by spread, against the lower bound (total demand over one host's capacity).

    .venv/bin/python bench/placement.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from flexvm.capacity.fit import Allocation, Room, room_on  # noqa: E402
from flexvm.capacity.planning import take_room  # noqa: E402
from flexvm.compute.placing import place_vm  # noqa: E402
from flexvm.model.host import Accelerator, Host, HostState  # noqa: E402
from flexvm.model.image import Image  # noqa: E402
from flexvm.model.sizes import BUILTIN_SIZES  # noqa: E402
from flexvm.model.units import GIB  # noqa: E402
from flexvm.model.vm import Nic, PowerState, ProvisioningState, Vm  # noqa: E402
from flexvm.scheduler.placement import HostSnapshot, Request, choose  # noqa: E402
from flexvm.store.db import open_database  # noqa: E402
from flexvm.store.repositories import HostRepo, VmRepo  # noqa: E402

NOW = datetime.now(UTC)
# Share of creates by size, roughly how small B- and D-series dominate real fleets.
MIX = {
    "Standard_B1s": 20,
    "Standard_B1ms": 15,
    "Standard_B2s": 20,
    "Standard_B2ms": 10,
    "Standard_D2s_v5": 15,
    "Standard_D4s_v5": 10,
    "Standard_E2s_v5": 5,
    "Standard_F2s_v2": 5,
}
SIZES = {s.name: s for s in BUILTIN_SIZES}


def make_host(i: int, cpus: int = 32, memory_gib: int = 128) -> Host:
    return Host(
        name=f"h{i:05d}",
        uri=f"fake://bench-{i}",
        state=HostState.UP,
        cpus=cpus,
        memory_mib=memory_gib * 1024,
        disk_capacity_bytes=4096 * GIB,
        accelerator=Accelerator.KVM,
        accelerator_reason="bench",
        libvirt_version="9.0.0",
        hypervisor_version="7.2.0",
        cpu_ratio=4.0,
        ram_ratio=1.0,
    )


def random_snapshots(count: int, rng: random.Random) -> list[HostSnapshot]:
    snapshots = []
    for i in range(count):
        host = make_host(i)
        used = rng.random() * 0.9
        room = room_on(host, Allocation(int(128 * used), int(host.memory_mib * used), int(2048 * GIB * used)))
        snapshots.append(HostSnapshot(host, room))
    return snapshots


def plain_best_fit(snapshots: list[HostSnapshot], request: Request) -> Host | None:
    """The baseline: the same best-fit choice as one bare loop, with no reasons and no pipeline."""
    best, best_key = None, None
    for s in snapshots:
        room = s.room
        if (
            s.host.state is HostState.UP
            and room.vcpus_free >= request.vcpus
            and room.memory_mib_free >= request.memory_mib
            and room.disk_bytes_free >= request.disk_bytes
        ):
            key = (room.memory_mib_free, room.vcpus_free)
            if best_key is None or key < best_key:
                best, best_key = s.host, key
    return best


def per_second(fn, budget: float = 1.0) -> float:  # noqa: ANN001
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget and count >= 3:
            return count / elapsed


def transaction_rate(host_count: int, budget: float) -> float:
    """Placement transactions per second against a SQLite pool of ``host_count`` hosts."""
    with tempfile.TemporaryDirectory(prefix="flexvm-bench-") as tmp:
        db = open_database(f"sqlite:///{tmp}/bench.db")
        with db.session() as session:
            repo = HostRepo(session)
            for i in range(host_count):
                repo.add(make_host(i))
        image = Image("img", "qcow2", "img.qcow2", GIB, GIB, "0" * 64, NOW)
        size = SIZES["Standard_B2s"]

        def one() -> None:
            with db.session() as session:
                vm = Vm(
                    id=str(uuid.uuid4()),
                    name=f"v{uuid.uuid4().hex[:10]}",
                    size=size.name,
                    image="img",
                    vcpus=size.vcpus,
                    memory_mib=size.memory_mib,
                    disk_bytes=size.disk_bytes,
                    provisioning_state=ProvisioningState.CREATING,
                    power_state=PowerState.STARTING,
                    host=None,
                    created_at=NOW,
                    nics=[Nic("user", "52:54:00:00:00:01")],
                )
                place_vm(session, vm, image)
                VmRepo(session).add(vm)

        rate = per_second(one, budget)
        db.engine.dispose()
        return rate


def decisions(quick: bool) -> None:
    rng = random.Random(7)
    request = Request(2, 4096, 8 * GIB)
    print("Placement decisions per second (one request: 2 vCPU, 4 GiB, 8 GiB disk)\n")
    print(f"{'hosts':>7} {'bare best-fit loop':>19} {'flexvm choose()':>16} {'ratio':>7} {'create transaction':>19}")
    for count in (100, 1000, 10000):
        snapshots = random_snapshots(count, rng)
        baseline = per_second(lambda s=snapshots: plain_best_fit(s, request), 0.5 if quick else 1.0)
        ours = per_second(lambda s=snapshots: choose(s, request), 0.5 if quick else 1.0)
        txn = transaction_rate(count, 0.5 if quick else 2.0)
        print(f"{count:>7} {baseline:>17.0f}/s {ours:>14.0f}/s {ours / baseline:>6.2f}x {txn:>17.1f}/s")


def packing(policy: str, events: int, hosts: int, seed: int) -> tuple[int, int, float]:
    """Replay a create/delete stream; return (peak hosts used, hosts used at the end, mean used)."""
    rng = random.Random(seed)
    names = list(MIX)
    weights = [MIX[n] for n in names]
    snapshots = {
        h.host.name: h for h in (HostSnapshot(make_host(i), room_on(make_host(i), Allocation())) for i in range(hosts))
    }
    empty: dict[str, Room] = {name: s.room for name, s in snapshots.items()}
    live: list[tuple[str, Request]] = []
    peak, used_sum = 0, 0
    for _ in range(events):
        if live and rng.random() < 0.4:  # a delete, of a random live VM
            host, request = live.pop(rng.randrange(len(live)))
            room = snapshots[host].room
            snapshots[host] = HostSnapshot(
                snapshots[host].host,
                Room(
                    room.vcpus_total,
                    room.memory_mib_total,
                    room.disk_bytes_total,
                    room.vcpus_free + request.vcpus,
                    room.memory_mib_free + request.memory_mib,
                    room.disk_bytes_free + request.disk_bytes,
                ),
            )
        else:
            size = SIZES[rng.choices(names, weights)[0]]
            request = Request(size.vcpus, size.memory_mib, size.disk_bytes)
            host = choose(list(snapshots.values()), request, policy=policy).host.name
            snapshots[host] = HostSnapshot(snapshots[host].host, take_room(snapshots[host].room, request))
            live.append((host, request))
        used = sum(1 for name, s in snapshots.items() if s.room != empty[name])
        peak = max(peak, used)
        used_sum += used
    return peak, sum(1 for name, s in snapshots.items() if s.room != empty[name]), used_sum / events


def lower_bound_now(events: int, seed: int) -> tuple[int, int]:
    """Peak and final lower bounds: demand (the tighter of vCPU and memory) over one host's room."""
    rng = random.Random(seed)
    names = list(MIX)
    weights = [MIX[n] for n in names]
    cap = room_on(make_host(0), Allocation())
    live: list[Request] = []
    peak = 0

    def bound() -> int:
        vcpus = sum(r.vcpus for r in live) / cap.vcpus_total
        memory = sum(r.memory_mib for r in live) / cap.memory_mib_total
        return math.ceil(max(vcpus, memory))

    for _ in range(events):
        if live and rng.random() < 0.4:
            live.pop(rng.randrange(len(live)))
        else:
            size = SIZES[rng.choices(names, weights)[0]]
            live.append(Request(size.vcpus, size.memory_mib, size.disk_bytes))
        peak = max(peak, bound())
    return peak, bound()


def packing_report(quick: bool) -> None:
    events, hosts = (1500, 120) if quick else (4000, 300)
    print(
        f"\nPacking: {events} events (60% create, 40% delete), Azure-like size mix, hosts of 32 CPUs x4 and 128 GiB\n"
    )
    print(f"{'':12} {'peak hosts':>11} {'at the end':>11} {'mean':>8} {'peak vs bound':>14}")
    bound_peak, bound_end = lower_bound_now(events, seed=11)
    for policy in ("best-fit", "spread"):
        peak, end, mean = packing(policy, events, hosts, seed=11)
        print(f"{policy:12} {peak:>11} {end:>11} {mean:>8.1f} {peak / bound_peak:>13.2f}x")
    print(f"{'lower bound':12} {bound_peak:>11} {bound_end:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    decisions(args.quick)
    packing_report(args.quick)


if __name__ == "__main__":
    main()
