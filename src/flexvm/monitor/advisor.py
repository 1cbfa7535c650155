"""The advisor: VMs that are too big or too small for what they do, and hosts whose overcommit
makes guests wait — each with the evidence, and a proposal in the domain's terms (a VM's current
and proposed size; a host's setting to change). The edges turn a proposal into a command line or
a request.

- oversized: CPU low on average and at its peak, and memory well below what the VM has, over the
  window: the smallest size that still leaves headroom (in the VM's family where one fits);
- starved: CPU near 100% of the vCPUs on average, or memory nearly all used: a larger size;
- contention: on a host, the vCPUs of its VMs waiting for a host CPU more than a threshold.
A VM with too few measurements in the window gets no advice (no guessing from two points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from flexvm.compute.sizes import SizeService
from flexvm.errors import NotFound
from flexvm.model.host import Host
from flexvm.model.sizes import Size
from flexvm.model.times import parse_duration
from flexvm.model.vm import PowerState, Vm
from flexvm.monitor.query import MetricsQuery, Series
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, VmRepo

MIN_SAMPLES = 3
HEADROOM = 0.7  # a recommended size should run the observed peak at 70% at most
OVERSIZED_CPU_AVG, OVERSIZED_CPU_MAX, OVERSIZED_MEMORY = 10.0, 40.0, 40.0
STARVED_CPU_AVG, STARVED_MEMORY = 90.0, 90.0
CONTENTION_WAIT = 10.0


class AdviceKind(StrEnum):
    OVERSIZED = "oversized"
    STARVED = "starved"
    CONTENTION = "contention"


@dataclass(frozen=True)
class ResizeProposal:
    """Resize ``vm`` from the size it has to the one its measurements call for."""

    vm: str
    current_size: str
    proposed_size: str


@dataclass(frozen=True)
class HostProposal:
    """Ease an overcommitted host: a CPU ratio below today's ``cpu_ratio`` (fewer vCPUs share
    its CPUs from then on), or a rebalance that moves VMs to hosts with room."""

    host: str
    cpu_ratio: float


@dataclass
class Advice:
    kind: AdviceKind
    subject: str  # the VM or host it is about
    message: str
    evidence: dict[str, float] = field(default_factory=dict)  # the measured figures behind it
    resize: ResizeProposal | None = None  # for a VM: None when no better size is defined
    host_change: HostProposal | None = None  # for a host


@dataclass
class AdvisorReport:
    window: str
    advice: list[Advice]
    not_enough_data: list[str]


class Advisor:
    def __init__(self, db: Database, query: MetricsQuery, sizes: SizeService) -> None:
        self.db = db
        self.query = query
        self.sizes = sizes

    def advise(self, window: str = "1h") -> AdvisorReport:
        parse_duration(window, "window")  # a bad window is refused even when there is nothing to look at
        with self.db.session() as session:
            vms = [vm for vm in VmRepo(session).list() if vm.power_state is PowerState.RUNNING]
            hosts = HostRepo(session).list()
        sizes = self.sizes.all()
        advice: list[Advice] = []
        thin: list[str] = []
        for vm in vms:
            found = self._advise_vm(vm, window, sizes)
            if found is None:
                thin.append(vm.name)
            else:
                advice += found
        for host in hosts:
            advice += self._advise_host(host, window, [vm for vm in vms if vm.host == host.name])
        return AdvisorReport(window, advice, thin)

    def _series(self, kind: str, subject: str, metric: str, window: str, statistic: str) -> Series | None:
        # About 60 points over the window, however long: enough to tell a steady load from a blip.
        grain = f"{max(1, int(parse_duration(window, 'window') / 60))}s"
        try:
            series = self.query.series(kind, subject, metric, window=window, statistic=statistic, grain=grain)
        except NotFound:
            return None
        return series if series.samples >= MIN_SAMPLES else None

    def _advise_vm(self, vm: Vm, window: str, sizes: list[Size]) -> list[Advice] | None:
        cpu_avg = self._series("vm", vm.name, "cpu_percent", window, "avg")
        cpu_max = self._series("vm", vm.name, "cpu_percent", window, "max")
        if cpu_avg is None or cpu_max is None:
            return None
        memory = self._series("vm", vm.name, "memory_used_mib", window, "max")
        avg, peak = cpu_avg.summary() or 0.0, max(v for _, v in cpu_max.points)
        used_mib = max(v for _, v in memory.points) if memory is not None else None
        used_percent = 100.0 * used_mib / vm.memory_mib if used_mib is not None else None
        evidence = {"cpu_avg_percent": round(avg, 1), "cpu_max_percent": round(peak, 1)}
        if used_mib is not None and used_percent is not None:
            evidence.update({"memory_used_max_mib": round(used_mib), "memory_used_max_percent": round(used_percent, 1)})
        found: list[Advice] = []
        if avg >= STARVED_CPU_AVG or (used_percent is not None and used_percent >= STARVED_MEMORY):
            bigger = self._bigger(
                vm,
                sizes,
                cpu=avg >= STARVED_CPU_AVG,
                memory=used_percent is not None and used_percent >= STARVED_MEMORY,
            )
            what = "CPU" if avg >= STARVED_CPU_AVG else "memory"
            found.append(
                Advice(
                    AdviceKind.STARVED,
                    vm.name,
                    f"{vm.name} is starved of {what} at {vm.size}"
                    + (f"; move it to {bigger.name}" if bigger else "; no larger size is defined"),
                    evidence,
                    resize=ResizeProposal(vm.name, vm.size, bigger.name) if bigger else None,
                )
            )
        elif (
            avg < OVERSIZED_CPU_AVG
            and peak < OVERSIZED_CPU_MAX
            and (used_percent is None or used_percent < OVERSIZED_MEMORY)
        ):
            smaller = self._smaller(vm, sizes, peak, used_mib)
            if smaller is not None:
                found.append(
                    Advice(
                        AdviceKind.OVERSIZED,
                        vm.name,
                        f"{vm.name} uses little of {vm.size} ({vm.vcpus} vCPU, {vm.memory_mib} MiB); "
                        f"{smaller.name} ({smaller.describe()}) would do",
                        evidence,
                        resize=ResizeProposal(vm.name, vm.size, smaller.name),
                    )
                )
        return found

    def _advise_host(self, host: Host, window: str, vms: list[Vm]) -> list[Advice]:
        waits: list[float] = []
        for vm in vms:
            series = self._series("vm", vm.name, "cpu_wait_percent", window, "avg")
            summary = series.summary() if series is not None else None
            if summary is not None:
                waits.append(summary)
        if not waits or max(waits) < CONTENTION_WAIT:
            return []
        worst = max(waits)
        return [
            Advice(
                AdviceKind.CONTENTION,
                host.name,
                f"host {host.name} is overcommitted: its VMs' vCPUs wait up to {worst:.0f}% of the time for a CPU; "
                f"lower its CPU ratio ({host.cpu_ratio:g}) or move VMs away",
                {"vcpu_wait_max_percent": round(worst, 1), "vms": float(len(waits))},
                host_change=HostProposal(host.name, host.cpu_ratio),
            )
        ]

    @staticmethod
    def _family(vm: Vm, sizes: list[Size]) -> list[Size]:
        current = next((s for s in sizes if s.name == vm.size), None)
        family = [s for s in sizes if current is not None and s.family == current.family]
        return family or sizes

    def _smaller(self, vm: Vm, sizes: list[Size], cpu_peak: float, used_mib: float | None) -> Size | None:
        """The smallest size that runs the observed peak with headroom, if smaller than today's."""
        need_vcpus = max(1, math.ceil(vm.vcpus * cpu_peak / 100 / HEADROOM))
        need_mib = (used_mib or 0) / HEADROOM
        fitting = [
            s
            for s in self._family(vm, sizes)
            if s.vcpus >= need_vcpus
            and s.memory_mib >= need_mib
            and (s.memory_mib, s.vcpus) < (vm.memory_mib, vm.vcpus)
            and s.memory_mib <= vm.memory_mib
            and s.vcpus <= vm.vcpus
        ]
        return min(fitting, key=lambda s: (s.memory_mib, s.vcpus, s.name)) if fitting else None

    def _bigger(self, vm: Vm, sizes: list[Size], *, cpu: bool, memory: bool) -> Size | None:
        """The next size up in what is short (doubling it), the smallest that does."""
        candidates = [
            s
            for s in self._family(vm, sizes)
            if (not cpu or s.vcpus >= vm.vcpus * 2)
            and (not memory or s.memory_mib >= vm.memory_mib * 2)
            and s.vcpus >= vm.vcpus
            and s.memory_mib >= vm.memory_mib
        ]
        return min(candidates, key=lambda s: (s.memory_mib, s.vcpus, s.name)) if candidates else None
