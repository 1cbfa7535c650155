"""Choose a host: run every filter over every host, rank the survivors with a weigher.

``place`` returns the chosen host or raises CapacityError naming every host with the reason it
was rejected (and what each has free), so "no host fits" is never a mystery.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from flexvm.errors import Action, CapacityError, InvalidInput, Remedy
from flexvm.model.host import Host
from flexvm.scheduler.filters import DEFAULT_FILTERS, Filter
from flexvm.scheduler.snapshot import HostSnapshot, Request, SetSpread
from flexvm.scheduler.weighers import WEIGHERS, emptiest_fault_domain_first

RANKED_SHOWN = 5

__all__ = ["HostSnapshot", "Placement", "Request", "SetSpread", "choose", "place", "rejection"]


@dataclass(frozen=True)
class Placement:
    host: Host
    rejected: dict[str, str]  # host name -> why not
    ranked: list[str]  # the best hosts that could take it (up to RANKED_SHOWN), best first


def rejection(snapshot: HostSnapshot, request: Request, filters: Sequence[Filter] = DEFAULT_FILTERS) -> str | None:
    """The first reason this host cannot take the request, or None if every filter passes."""
    for check in filters:
        reason = check(snapshot, request)
        if reason is not None:
            return reason
    return None


def choose(
    snapshots: Sequence[HostSnapshot],
    request: Request,
    *,
    policy: str = "best-fit",
    filters: Sequence[Filter] = DEFAULT_FILTERS,
) -> Placement:
    if policy not in WEIGHERS:
        raise InvalidInput("policy", f"unknown placement policy '{policy}'; use one of: {', '.join(WEIGHERS)}")
    weigher = WEIGHERS[policy]
    if request.spread is not None:
        weigher = emptiest_fault_domain_first(weigher)
    rejected: dict[str, str] = {}
    candidates = []
    for snapshot in snapshots:
        reason = rejection(snapshot, request, filters)
        if reason is None:
            candidates.append(snapshot)
        else:
            rejected[snapshot.host.name] = reason
    if not candidates:
        raise _no_host(snapshots, request, rejected)
    # The best few are enough to show; sorting thousands of hosts would cost more than choosing.
    ranked = heapq.nsmallest(RANKED_SHOWN, candidates, key=lambda s: weigher(s, request))
    return Placement(ranked[0].host, rejected, [s.host.name for s in ranked])


def place(snapshots: Sequence[HostSnapshot], request: Request, *, policy: str = "best-fit") -> Host:
    return choose(snapshots, request, policy=policy).host


def _no_host(snapshots: Sequence[HostSnapshot], request: Request, rejected: dict[str, str]) -> CapacityError:
    if not snapshots:
        return CapacityError("no hosts are registered", details={"hosts": {}}, remedy=Remedy(action=Action.ADD_HOST))
    listed = "; ".join(f"{name}: {why}" for name, why in rejected.items())
    free = "; ".join(f"{s.host.name}: {s.room.describe_free()}" for s in snapshots)
    return CapacityError(
        f"no host can hold {request.describe()} — {listed}. Free now: {free}", details={"hosts": rejected}
    )
