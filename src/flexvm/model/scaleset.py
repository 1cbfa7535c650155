"""Scale sets: N identical VMs from one model, behind one load balancer, grown and shrunk as a unit.

An instance is an ordinary VM (named ``<set>-<index>``) plus what the set knows about it: the
model version it was built from and where it stands with the load balancer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

MAX_INSTANCES = 1000


class ScaleInPolicy(StrEnum):
    """Which instances go first when the set shrinks (Azure's names)."""

    DEFAULT = "default"  # balance fault domains, then the newest
    NEWEST = "newest"
    OLDEST = "oldest"


class InstanceState(StrEnum):
    """An instance's place in the set's life: only SERVING ones get requests."""

    JOINING = "joining"  # being created, booting, or waiting for its probe to pass
    SERVING = "serving"  # ready, probed, a backend of the load balancer
    LEAVING = "leaving"  # drained from the load balancer, about to be deleted


@dataclass(frozen=True)
class LoadBalancerSpec:
    bind_address: str
    port: int  # the front port, on bind_address
    backend_port: int  # the port instances serve on
    probe_path: str = "/"

    def describe(self) -> str:
        return f"{self.bind_address}:{self.port} -> instances:{self.backend_port} (probe GET {self.probe_path})"


@dataclass
class ScaleSet:
    name: str
    size: str
    image: str
    capacity: int  # how many instances the set should have: what scale and autoscale change
    fault_domains: int
    scale_in_policy: ScaleInPolicy
    created_at: datetime
    load_balancer: LoadBalancerSpec | None = None
    network: str | None = None  # where instances must live for the load balancer to reach them
    user_data: str | None = None
    model_version: int = 1  # bumped when size or image change; older instances are rolled
    max_unavailable: int = 1  # the rolling update's bound
    next_index: int = 0
    active_operation_id: str | None = None
    deleting: bool = False  # a delete was asked for: healing finishes it instead of regrowing
    error: str | None = None  # the last thing that went wrong (an instance that never came up)
    replaced: int = 0  # instances replaced because they failed to come up
    # Autoscale: a profile (min/max/default) and rules, as plain dicts of AutoscaleRule fields.
    autoscale: dict[str, Any] | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)
    last_scale_at: float | None = None  # when autoscale last acted (cooldowns count from here)
    last_scale_rule: str | None = None

    @property
    def availability_set(self) -> str:
        """The availability set that spreads the instances (same name as the set)."""
        return self.name

    def instance_name(self, index: int) -> str:
        return f"{self.name}-{index}"


@dataclass
class Instance:
    vm_name: str
    scale_set: str
    index: int
    model_version: int
    state: InstanceState
    created_at: datetime


@dataclass
class AutoscaleEvent:
    """One autoscale evaluation that acted or was held back, with its reason."""

    id: int | None
    scale_set: str
    at: float
    action: str  # increase, decrease, held, error
    current: int
    target: int
    reason: str
    rule_id: str | None = None
    evidence: dict[str, float | None] = field(default_factory=dict)
