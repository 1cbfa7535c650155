"""Filters: one idea each. A filter looks at one host snapshot and says why it cannot take the
request, or None if it can. Every reason is written for the operator reading "no host fits"."""

from __future__ import annotations

from collections.abc import Callable
from math import ceil

from flexvm.capacity import fit
from flexvm.model.host import HostState
from flexvm.scheduler.snapshot import HostSnapshot, Request

Filter = Callable[[HostSnapshot, Request], str | None]


def host_state(snapshot: HostSnapshot, request: Request) -> str | None:
    host = snapshot.host
    if host.state is HostState.UP:
        return None
    return f"host is {host.state.value}" + (f" ({host.state_reason})" if host.state_reason else "")


def pinned_host(snapshot: HostSnapshot, request: Request) -> str | None:
    if request.pinned is None or snapshot.host.name == request.pinned:
        return None
    return f"the request is pinned to host {request.pinned}"


def excluded_host(snapshot: HostSnapshot, request: Request) -> str | None:
    if snapshot.host.name in request.excluded:
        return "excluded by the request (e.g. it failed during this operation)"
    return None


def network(snapshot: HostSnapshot, request: Request) -> str | None:
    if request.network is None or snapshot.host.network == request.network:
        return None
    return f"not on network {request.network} (the VM's NIC is there)"


# Room: capacity.fit's rule, the same one every other check of a host uses.
def vcpus(snapshot: HostSnapshot, request: Request) -> str | None:
    return fit.vcpus_short(snapshot.room, request.vcpus)


def memory(snapshot: HostSnapshot, request: Request) -> str | None:
    return fit.memory_short(snapshot.room, request.memory_mib)


def disk(snapshot: HostSnapshot, request: Request) -> str | None:
    return fit.disk_short(snapshot.room, request.disk_bytes)


def image_requirements(snapshot: HostSnapshot, request: Request) -> str | None:
    if not request.requires:
        return None
    missing = sorted(request.requires - snapshot.features)
    if not missing:
        return None
    return f"lacks what the image requires: {', '.join(missing)}"


def availability_set(snapshot: HostSnapshot, request: Request) -> str | None:
    """Spread an availability set's VMs so no fault domain holds more than its share.

    A set of F fault domains uses at most F distinct host fault domains; within those, a domain
    may hold at most ceil(members / F) of the set's VMs, counting the new one.
    """
    spread = request.spread
    if spread is None or not spread.strict:
        return None
    domain = snapshot.fault_domain
    used = spread.members_by_domain
    if domain not in used and len([d for d, n in used.items() if n > 0]) >= spread.fault_domains:
        return (
            f"availability set {spread.name} already uses all of its {spread.fault_domains} fault domains "
            f"({', '.join(sorted(d for d, n in used.items() if n > 0))})"
        )
    share = ceil((sum(used.values()) + 1) / spread.fault_domains)
    if used.get(domain, 0) + 1 > share:
        return (
            f"fault domain {domain} already holds {used[domain]} of availability set {spread.name}'s VMs "
            f"(its share is {share})"
        )
    return None


# The pipeline, in the order reasons are most useful to read: cheapest and most decisive first.
DEFAULT_FILTERS: tuple[Filter, ...] = (
    pinned_host,
    excluded_host,
    host_state,
    network,
    image_requirements,
    availability_set,
    vcpus,
    memory,
    disk,
)
