"""Planning a rolling maintenance: which hosts go together, whether each batch's drain fits in
the rest of the pool (N+1), what cannot move live and why, and how long it should take.

Hosts are taken in batches of up to ``parallel``. Two hosts share a batch only if no availability
set (a scale set's instances are one too) has members on both in different fault domains: a batch
then takes at most one fault domain of every set at once, as Azure's maintenance configurations do.
Each batch is checked on its own copy of the pool, since its VMs come back home before the next
batch begins (see rolling): every running VM of its hosts must find room on the hosts outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flexvm.compute.drain import MovesPlan, Simulation, plan_moves_off
from flexvm.errors import InvalidInput, InvalidState, NotFound
from flexvm.model.host import Host, HostState
from flexvm.model.scaleset import ScaleSet
from flexvm.model.vm import PowerState, Vm
from flexvm.store.repositories import HostRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo

MAX_PARALLEL_HOSTS = 8
SETTLE_CHECKS = 3  # answers in a row, a health interval apart, before an updated host counts as back
MOVES_AT_ONCE = 2  # live moves at a time off (and back to) a host: a drain of 4 lab guests 12.4 s -> 6.3 s


@dataclass
class SetCheck:
    """A scale set's running instances against its minimum, now and at the plan's worst moment."""

    name: str
    minimum: int
    running: int
    lowest: int


@dataclass
class Batch:
    number: int
    hosts: list[str]
    drains: list[MovesPlan]  # one per host, planned together on one copy of the pool
    estimate_seconds: float


@dataclass
class MaintenancePlan:
    hosts: list[str]
    parallel: int
    batches: list[Batch] = field(default_factory=list)
    sets: list[SetCheck] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)  # why it cannot run as planned; none: it can
    estimate_seconds: float = 0.0  # moves away and back, and each updated host's settling
    hook_seconds: float | None = None  # the hook's time per batch in the last run, in the estimate

    @property
    def fits(self) -> bool:
        return not self.blockers


def choose_hosts(session: Any, names: list[str] | None, every: bool) -> list[Host]:
    """The hosts to maintain: the named ones or all; each must be up (a host down, failed or
    already in maintenance cannot be drained and updated as planned)."""
    if every == bool(names):
        raise InvalidInput("hosts", "name the hosts to maintain (--hosts A,B) or ask for all of them (--all)")
    repo = HostRepo(session)
    if every:
        hosts = repo.list()
        if not hosts:
            raise InvalidState("there are no hosts to maintain")
    else:
        assert names is not None
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise InvalidInput("hosts", f"each host once: {', '.join(doubled)} given more than once")
        hosts = []
        for name in names:
            found = repo.find(name)
            if found is None:
                raise NotFound("host", name)
            hosts.append(found)
    not_up = {h.name: h.state.value for h in hosts if h.state is not HostState.UP}
    if not_up:
        raise InvalidState(
            "every host to maintain must be up: "
            + ", ".join(f"{name} is {state}" for name, state in sorted(not_up.items()))
            + (" (leave it out with --hosts)" if every else ""),
            details={"not_up": not_up},
        )
    return hosts


def plan_maintenance(
    session: Any, hosts: list[Host], parallel: int, settle_seconds: float, hook_seconds: float | None = None
) -> MaintenancePlan:
    if not 1 <= parallel <= MAX_PARALLEL_HOSTS:
        raise InvalidInput("parallel", f"must be between 1 and {MAX_PARALLEL_HOSTS} hosts at a time, got {parallel}")
    vms = VmRepo(session).list()
    plan = MaintenancePlan([h.name for h in hosts], parallel, hook_seconds=hook_seconds)
    for number, names in enumerate(batches_of(hosts, vms, parallel), start=1):
        simulation = Simulation(session, strict_spread=False)  # the members come home after
        drains = [
            plan_moves_off(simulation, name, excluded=set(names), parallel=MOVES_AT_ONCE, live_only=True)
            for name in names
        ]
        longest = max((d.estimate_seconds for d in drains), default=0.0)
        # Away, the hook, settling, and back: the same VMs return, so as long again as the way out.
        estimate = 2 * longest + (hook_seconds or 0.0) + settle_seconds
        plan.batches.append(Batch(number, names, drains, estimate))
        plan.blockers += _cannot_move_live(drains, vms)
    plan.sets = _set_checks(session, vms, plan.batches)
    for check in plan.sets:
        if check.running < check.minimum:
            plan.blockers.append(
                f"scale set {check.name} runs {check.running} instance(s), below its minimum of {check.minimum}, "
                "before anything starts"
            )
        elif check.lowest < check.minimum:
            plan.blockers.append(
                f"scale set {check.name} would run {check.lowest} instance(s) at one point, below its minimum "
                f"of {check.minimum}"
            )
    plan.estimate_seconds = sum(b.estimate_seconds for b in plan.batches)
    return plan


def batches_of(hosts: list[Host], vms: list[Vm], parallel: int) -> list[list[str]]:
    """Hosts in batches of up to ``parallel``, by fault domain then name; a host joins the first
    batch it does not conflict with (see ``conflict``)."""
    domain = {h.name: h.fault_domain or h.name for h in hosts}
    sets_on: dict[str, set[str]] = {h.name: set() for h in hosts}
    for vm in vms:
        where = vm.host or vm.disk_host
        if vm.availability_set and where in sets_on:
            sets_on[where].add(vm.availability_set)
    batches: list[list[str]] = []
    for host in sorted(hosts, key=lambda h: (domain[h.name], h.name)):
        for batch in batches:
            if len(batch) < parallel and not any(conflict(host.name, other, sets_on, domain) for other in batch):
                batch.append(host.name)
                break
        else:
            batches.append([host.name])
    return batches


def conflict(a: str, b: str, sets_on: dict[str, set[str]], domain: dict[str, str]) -> bool:
    """Whether updating ``a`` and ``b`` at once would take two fault domains of one set."""
    return domain[a] != domain[b] and bool(sets_on[a] & sets_on[b])


def _cannot_move_live(drains: list[MovesPlan], vms: list[Vm]) -> list[str]:
    running = {vm.name for vm in vms if vm.power_state is PowerState.RUNNING}
    return [
        f"{vm} runs on {drain.host} and cannot move live: {why}"
        for drain in drains
        for vm, why in sorted(drain.stays.items())
        if vm in running
    ]


def set_minimum(scale_set: ScaleSet) -> int:
    """The fewest instances a set may run: its autoscale minimum, or else what its own rolling
    updates allow (its capacity less ``max_unavailable``)."""
    profile = scale_set.autoscale or {}
    if profile.get("enabled", True) and "min" in profile:
        return int(profile["min"])
    return max(scale_set.capacity - scale_set.max_unavailable, 0)


def _set_checks(session: Any, vms: list[Vm], batches: list[Batch]) -> list[SetCheck]:
    by_name = {vm.name: vm for vm in vms}
    checks = []
    for scale_set in ScaleSetRepo(session).list():
        members = [by_name[i.vm_name] for i in ScaleSetRepo(session).instances(scale_set.name) if i.vm_name in by_name]
        running = [vm for vm in members if vm.power_state is PowerState.RUNNING]
        worst = 0
        for batch in batches:
            stays = {vm for drain in batch.drains for vm in drain.stays}
            worst = max(worst, sum(1 for vm in running if vm.host in batch.hosts and vm.name in stays))
        checks.append(SetCheck(scale_set.name, set_minimum(scale_set), len(running), len(running) - worst))
    return checks
