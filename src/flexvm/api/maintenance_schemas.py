"""Request and response shapes of rolling maintenance."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool, StrictInt

from flexvm.api.schemas import MovesPlanOut, OperationOut, Strict
from flexvm.maintenance.rolling import MAX_HOOK, MAX_SECONDS

HOSTS_HELP = "the hosts to maintain; or all_hosts"


class MaintenancePlanRequest(Strict):
    hosts: list[str] | None = Field(None, description=HOSTS_HELP)
    all_hosts: StrictBool = False
    parallel: StrictInt = Field(1, description="hosts updated at once (never two fault domains of one set)")


class MaintenanceRunRequest(MaintenancePlanRequest):
    hook: str = Field(
        max_length=MAX_HOOK,
        description="the command that updates one host, run by /bin/sh with FLEXVM_HOST and FLEXVM_HOST_URI set",
    )
    hook_timeout: float = Field(1800.0, description=f"seconds a hook may run (1-{MAX_SECONDS:.0f})")
    host_timeout: float = Field(600.0, description="seconds for a host to answer its checks after its hook")


class BatchOut(BaseModel):
    number: int
    hosts: list[str]
    drains: list[MovesPlanOut]
    estimate_seconds: float


class SetCheckOut(BaseModel):
    name: str
    minimum: int
    running: int
    lowest: int


class MaintenancePlanOut(BaseModel):
    hosts: list[str]
    parallel: int
    batches: list[BatchOut]
    sets: list[SetCheckOut]
    blockers: list[str] = Field(description="why it cannot run as planned; empty when it can")
    fits: bool
    estimate_seconds: float
    hook_seconds: float | None = Field(description="a batch's hook time in the last run, counted in the estimate")


class MaintenanceStatusOut(BaseModel):
    state: str = Field(description="running, pausing, paused, canceling, succeeded, failed or canceled")
    reason: str | None = Field(description="why it is paused")
    asked_by: str | None
    hosts: dict[str, str] = Field(description="each host's phase: waiting, draining, updating, coming back, ...")
    operation: OperationOut
