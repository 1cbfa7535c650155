"""Which instances leave when a scale set shrinks: pure functions over the set's instances."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from flexvm.model.scaleset import InstanceState, ScaleInPolicy


@dataclass(frozen=True)
class Candidate:
    name: str
    index: int
    fault_domain: str  # the host's fault domain (or the host), "" when it has none
    state: InstanceState
    current_model: bool


def choose_victims(candidates: list[Candidate], count: int, policy: ScaleInPolicy) -> list[str]:
    """The ``count`` instances to remove. Whatever the policy, instances that do not serve (still
    joining, or built from an old model) go before healthy current ones: removing them costs no
    capacity. Then the policy: newest (highest index), oldest, or — the default — from the fault
    domain holding most instances, newest first, so the set stays balanced."""
    left = list(candidates)
    chosen: list[str] = []
    for _ in range(min(count, len(left))):
        victim = _next_victim(left, policy)
        chosen.append(victim.name)
        left.remove(victim)
    return chosen


def _next_victim(left: list[Candidate], policy: ScaleInPolicy) -> Candidate:
    not_serving = [c for c in left if c.state != InstanceState.SERVING]
    if not_serving:
        return max(not_serving, key=lambda c: c.index)
    outdated = [c for c in left if not c.current_model]
    if outdated:
        return min(outdated, key=lambda c: c.index)
    if policy == ScaleInPolicy.OLDEST:
        return min(left, key=lambda c: c.index)
    if policy == ScaleInPolicy.NEWEST:
        return max(left, key=lambda c: c.index)
    per_domain = Counter(c.fault_domain for c in left)
    crowded = max(per_domain.values())
    return max((c for c in left if per_domain[c.fault_domain] == crowded), key=lambda c: c.index)
