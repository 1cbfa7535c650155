"""Request and response shapes of the API (and so of the CLI's JSON output)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from flexvm.api.params import NameField, SizeNameField
from flexvm.model.projects import image_project, project_of_target, split_key


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Keyed(BaseModel):
    """A resource of a project, known below the API by its key (model/projects.py): shown as its
    project and its name. ``_keyed`` lists the fields that hold keys, the first naming the resource."""

    project: str = ""
    _keyed: ClassVar[tuple[str, ...]] = ("name",)

    @model_validator(mode="after")
    def _split_keys(self) -> Keyed:
        if self.project:
            return self  # split already (FastAPI validates a returned model again)
        for index, field_name in enumerate(self._keyed):
            key = getattr(self, field_name)
            if not key:
                continue
            project, name = split_key(key)
            if index == 0:
                self.project = project
            setattr(self, field_name, name)
        return self


# --- requests --------------------------------------------------------------------------------


class VmCreate(Strict):
    name: NameField
    size: SizeNameField
    image: NameField
    user_data: str | None = None
    host: str | None = Field(None, description="pin to this host")
    availability_set: NameField | None = None
    policy: Literal["best-fit", "spread"] = "best-fit"
    max_size: SizeNameField | None = Field(
        None, description="ceiling for resizing without a restart (default: the family's largest)"
    )
    storage: NameField | None = Field(
        None, description="shared storage for its disks (any host can then run it); default: its host's own disk"
    )
    ha: StrictBool = Field(False, description="started on another host if its own fails (needs shared storage)")
    ha_priority: StrictInt = Field(0, description="0-1000: higher ones are restarted first")


class VmUpdate(Strict):
    ha: StrictBool | None = Field(None, description="started on another host if its own fails")
    ha_priority: StrictInt | None = Field(None, description="0-1000: higher ones are restarted first")


class HostSettings(Strict):
    cpu_ratio: float | None = None
    ram_ratio: float | None = None
    disk_ratio: float | None = None
    fault_domain: str | None = None
    cpus: StrictInt | None = Field(None, description="CPUs to advertise instead of what libvirt counts")
    memory: StrictStr | StrictInt | None = Field(None, description="memory to advertise, e.g. '4G'; a number is MiB")
    reserved_memory: StrictStr | StrictInt | None = Field(None, description="kept for the host itself, e.g. '512M'")
    network: str | None = None
    bridge: str | None = None
    fence_agent: Literal["none", "lab", "ipmi", "manual"] | None = Field(
        None, description="what powers the host off before its VMs run elsewhere"
    )
    fence_options: dict[str, StrictStr] | None = Field(
        None, description="ipmi: address, user, password_file (a file on the server), interface; lab: root, host"
    )


class HostAdd(HostSettings):
    name: NameField
    uri: str


class NetworkCreate(Strict):
    name: NameField
    subnet: str
    range_start: str
    range_end: str
    gateway: str | None = None
    dhcp_hosts_dir: str | None = None


class AvailabilitySetCreate(Strict):
    name: NameField
    fault_domains: StrictInt = 2


class VmStop(Strict):
    force: bool = False


class DiskResize(Strict):
    size: StrictStr | StrictInt = Field(description="new size, e.g. '8G'; a bare number is GiB")


class SizeCreate(Strict):
    name: SizeNameField
    vcpus: StrictInt
    memory: StrictStr | StrictInt = Field(description="e.g. '512M' or '2G'; a bare number is MiB")
    disk: StrictStr | StrictInt = Field(description="OS disk, e.g. '2G'; a bare number is GiB")
    family: str | None = None


class ImageImport(Strict):
    name: NameField
    disk: str = Field(description="path of a qcow2 or raw file, readable by the server")
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    ready_marker: str | None = None
    cloud_init: bool = False
    description: str = ""
    sha256: str | None = None
    requires: list[str] = Field(default_factory=list, description="host features the image needs, e.g. ['kvm']")


class ImageBuild(Strict):
    recipe: Literal["tiny"] = "tiny"
    name: NameField = "tiny"


# --- responses -------------------------------------------------------------------------------


class StepOut(Out):
    name: str
    status: str
    started_at: str
    finished_at: str | None
    detail: str
    server: str | None = Field(None, description="the server that ran it (last, if it ran more than once)")
    attempts: int = Field(1, description="how many times it was started: more than 1 after a server died in it")
    error: dict[str, Any] | None = None


class OperationOut(Out):
    id: str
    kind: str
    target_kind: str
    target_name: str
    project: str | None = Field(None, description="the project it acts in; none for platform work")
    status: str
    progress: int
    message: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    steps: list[StepOut]
    error: dict[str, Any] | None
    result: dict[str, Any]
    owner: str | None = Field(None, description="the server running it (holding its lease)")
    claims: int = Field(0, description="how many times a server took it up: 1, plus one per resume")
    cancel_requested: bool = False

    @model_validator(mode="after")
    def _split_target(self) -> OperationOut:
        if self.project is not None:
            return self  # split already (FastAPI validates a returned model again)
        self.project = project_of_target(self.target_kind, self.target_name)
        if self.project is not None:
            self.target_name = self.target_name.partition(".")[2] or self.target_name
        return self


class ServerOut(Out):
    id: str
    hostname: str
    pid: int
    url: str
    version: str
    state: str = Field(description="up, stopped, gone (its process ended) or silent (no heartbeat)")
    leader: bool
    started_at: float
    heartbeat: float
    operations: list[str] = Field(description="operations it runs now")


class DiskOut(Out):
    name: str
    role: str
    size_bytes: int


class NicOut(Out):
    network: str
    mac: str
    ip: str | None


class VmOut(Out, Keyed):
    _keyed: ClassVar[tuple[str, ...]] = ("name", "availability_set")
    id: str
    name: str
    size: str
    image: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    provisioning_state: str
    power_state: str
    host: str | None
    disk_host: str | None
    created_at: datetime
    ready_at: datetime | None
    boot_seconds: float | None
    active_operation_id: str | None
    error: str | None
    availability_set: str | None
    max_size: str | None
    max_vcpus: int | None
    max_memory_mib: int | None
    moving_to: str | None
    disks: list[DiskOut]
    nics: list[NicOut]
    storage: str | None = Field(None, description="the shared storage its disks are on; none: its host's own")
    ha: bool = False
    ha_priority: int = 0
    unavailable: str | None = Field(None, description="why it cannot run now (its host failed)")

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_name(cls, value: Any) -> Any:
        return getattr(value, "name", value)


class SizeOut(BaseModel):
    name: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    family: str
    builtin: bool
    fits_now: int


class ImageOut(Out):
    project: str | None = Field(None, description="the project a private image belongs to; none if public")
    name: str
    format: str
    virtual_size: int
    file_size: int
    sha256: str
    kernel_file: str | None
    initrd_file: str | None
    cmdline: str | None
    ready_marker: str | None
    cloud_init: bool
    description: str
    requires: list[str]
    created_at: datetime

    @model_validator(mode="after")
    def _split_key(self) -> ImageOut:
        if self.project is not None:
            return self  # split already (FastAPI validates a returned model again)
        self.project = image_project(self.name)
        if self.project is not None:
            self.name = self.name.partition(".")[2]
        return self


class HostOut(Out):
    name: str
    uri: str
    state: str
    state_reason: str
    cpus: int
    memory_mib: int
    disk_capacity_bytes: int
    accelerator: str
    accelerator_reason: str
    libvirt_version: str
    hypervisor_version: str
    hostname: str
    cpu_model: str
    cpu_ratio: float
    ram_ratio: float
    disk_ratio: float
    reserved_memory_mib: int
    fault_domain: str | None
    last_seen: datetime | None
    advertised_cpus: int | None
    advertised_memory_mib: int | None
    network: str | None
    bridge: str | None
    fence_agent: str
    fence_options: dict[str, str]
    suspect_since: datetime | None


class HostDetail(HostOut):
    last_fence: OperationOut | None = Field(None, description="the last fence of this host: detected, fenced, restarts")
    vms: list[str] = []
    unmanaged_guests: list[str] = []
    leftovers: list[str] = []
    vcpus_allocated: int = 0
    memory_mib_allocated: int = 0
    disk_bytes_allocated: int = 0


class ConsoleOut(BaseModel):
    text: str
    next_offset: int


class ImageDeleted(BaseModel):
    deleted: str
    unreachable_hosts: list[str]


class NetworkOut(Out):
    name: str
    subnet: str
    range_start: str
    range_end: str
    gateway: str | None
    dhcp_hosts_dir: str | None
    created_at: datetime
    isolated: bool = Field(
        description="projects' guests are kept apart on it (only where flexvm's DHCP reservations hand out addresses)"
    )


class StorageAdd(Strict):
    name: NameField
    path: str = Field(description="the directory every host mounts at this same path (NFS, CephFS …)")


class StorageOut(BaseModel):
    name: str
    path: str
    hosts: dict[str, str | None] = Field(
        default_factory=dict, description="host -> null when it reaches the directory, else why not"
    )
    skipped: dict[str, str] = Field(
        default_factory=dict, description="hosts not asked because they are not up, with their state"
    )
    vms: list[str] = Field(default_factory=list, description="the VMs whose disks are there")


class AvailabilitySetOut(Keyed):
    name: str
    fault_domains: int
    created_at: datetime
    layout: dict[str, dict[str, list[str]]] = Field(default_factory=dict, description="fault domain -> host -> VMs")


class HostRoom(BaseModel):
    name: str
    state: str
    fault_domain: str | None
    cpu_ratio: float
    ram_ratio: float
    disk_ratio: float
    physical_cpus: int
    physical_memory_mib: int
    physical_disk_bytes: int
    vcpus_total: int
    vcpus_allocated: int
    memory_mib_total: int
    memory_mib_allocated: int
    disk_bytes_total: int
    disk_bytes_allocated: int
    fits: dict[str, int]


class CapacityOut(BaseModel):
    hosts: list[HostRoom]
    fits: dict[str, int] = Field(description="size -> how many more fit in the whole pool right now")


class WhatIfOut(BaseModel):
    size: str
    requested: int
    fits: bool
    placed: dict[str, int]
    first_failure: str | None


class FailureOut(BaseModel):
    lost_host: str | None
    survives: bool
    moved: dict[str, str]
    homeless: dict[str, str]


class ResizeRequest(Strict):
    size: SizeNameField
    allow_restart: bool = False
    force: bool = Field(False, description="shrink memory even if the guest is using it")
    dry_run: bool = False


class ResizePlanOut(BaseModel):
    vm: str
    current: str
    target: str
    path: str
    host: str | None
    destination: str | None
    steps: list[str]
    warnings: list[str]
    estimate_seconds: float


class MigrateRequest(Strict):
    to: NameField | None = Field(None, description="destination host; default: the scheduler's choice")
    cold: bool = False
    dry_run: bool = False


class MovePlanOut(BaseModel):
    vm: str
    source: str | None
    destination: str
    mode: str
    estimate_seconds: float
    rejected: dict[str, str]
    notes: list[str]


class DrainRequest(Strict):
    parallel: StrictInt = 1
    dry_run: bool = False


class RebalanceRequest(Strict):
    threshold: float = Field(0.25, description="largest allowed gap in memory use between hosts (0-1)")
    max_moves: StrictInt = 5
    dry_run: bool = False


class MovesPlanOut(BaseModel):
    host: str | None
    moves: list[MovePlanOut]
    stays: dict[str, str]
    parallel: int
    estimate_seconds: float
    spread_before: float | None
    spread_after: float | None


class SnapshotRequest(Strict):
    name: NameField | None = Field(None, description="default: snap-<date>-<time>")


class CaptureRequest(Strict):
    image: NameField


class ExportRequest(Strict):
    file: str = Field(description="absolute path the server writes the export to")


class ImportRequest(Strict):
    file: str = Field(description="absolute path of an export, readable by the server")
    name: str | None = None
    size: SizeNameField | None = None


class SeriesOut(BaseModel):
    kind: str
    subject: str
    metric: str
    statistic: str
    window_seconds: float
    grain_seconds: float
    source: str
    summary: float | None
    points: list[tuple[float, float]]
    samples: int


class LatestOut(BaseModel):
    kind: str
    subject: str
    at: float
    values: dict[str, float]
    labels: dict[str, str]


class ResizeProposalOut(BaseModel):
    vm: str
    current_size: str
    proposed_size: str


class HostProposalOut(BaseModel):
    host: str
    cpu_ratio: float = Field(description="today's ratio: the proposal is a lower one, or a rebalance")


class AdviceOut(BaseModel):
    kind: str = Field(description="oversized, starved or contention")
    subject: str = Field(description="the VM or host it is about")
    message: str
    evidence: dict[str, float] = Field(description="the measured figures behind it")
    resize: ResizeProposalOut | None = Field(description="for a VM: its current and proposed size")
    host_change: HostProposalOut | None = Field(description="for a host: what to change")


class AdvisorOut(BaseModel):
    window: str
    advice: list[AdviceOut]
    not_enough_data: list[str]


# --- scale sets and autoscale ----------------------------------------------------------------


class ScaleSetCreate(Strict):
    name: NameField
    size: SizeNameField
    image: NameField
    instances: StrictInt
    lb_port: str | None = Field(
        None, description="'FRONT:BACK' (e.g. '8080:80') or one port; no load balancer if unset"
    )
    lb_bind: str | None = Field(None, description="address the frontend listens on (default: the server's lb_bind)")
    probe_path: str = Field("/", description="instances join the load balancer once GET of this answers 200")
    fault_domains: StrictInt | None = None
    user_data: str | None = None
    scale_in_policy: Literal["default", "newest", "oldest"] = "default"
    max_unavailable: StrictInt = Field(1, description="instances a rolling update may take down at once")


class ScaleRequest(Strict):
    instances: StrictInt


class ScaleSetUpdate(Strict):
    size: SizeNameField | None = None
    image: NameField | None = None
    max_unavailable: StrictInt | None = None


class AutoscaleProfileIn(Strict):
    min: StrictInt
    max: StrictInt
    default: StrictInt = Field(description="the count kept at least while no metrics arrive")


class AutoscaleRuleIn(Strict):
    metric: str = Field(description="e.g. cpu_percent, requests_per_instance_per_s")
    statistic: str = "avg"
    grain: str = Field("1m", description="bucket length, e.g. 1m")
    window: str = Field("5m", description="how far back the statistic looks, e.g. 5m")
    operator: str = Field(description="gt, ge, lt, le, eq, ne (or >, <, Azure's GreaterThan...)")
    threshold: float
    action: Literal["increase", "decrease"]
    count: StrictInt = Field(1, description="instances to add or remove")
    cooldown: str = Field("5m", description="wait after a scale action before this rule may act again")


class SimulateRequest(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: StrictStr | float | None = Field(
        None,
        alias="from",
        description="ISO 8601 time, unix seconds, or relative like '-1h' (default: an hour ago; "
        "with synthetic: today's midnight, UTC)",
    )
    to: StrictStr | float | None = Field(None, description="like 'from' (default: now); a synthetic run is one day")
    step: str = Field("15s", description="how often the rules are evaluated")
    synthetic: bool = Field(False, description="replay a generated day of load instead of the recording")
    rules: list[AutoscaleRuleIn] | None = Field(None, description="rules to try (default: the set's own)")
    profile: AutoscaleProfileIn | None = Field(None, description="profile to try (default: the set's own)")
    flap_guard: bool = True


class LoadBalancerOut(BaseModel):
    bind_address: str
    port: int
    backend_port: int
    probe_path: str


class AutoscaleProfileOut(BaseModel):
    min: int
    max: int
    default: int


class AutoscaleRuleOut(BaseModel):
    id: str
    metric: str
    statistic: str
    grain_seconds: float
    window_seconds: float
    operator: str
    threshold: float
    action: str
    count: int
    cooldown_seconds: float
    description: str


class AddedRuleOut(BaseModel):
    rule: AutoscaleRuleOut
    warnings: list[str] = Field(description="rules that work against each other (the rule was added)")


class ScaleSetOut(Keyed):
    name: str
    size: str
    image: str
    capacity: int
    fault_domains: int
    scale_in_policy: str
    load_balancer: LoadBalancerOut | None
    network: str | None
    model_version: int
    max_unavailable: int
    active_operation_id: str | None
    error: str | None
    replaced: int
    autoscale: AutoscaleProfileOut | None = Field(description="null while autoscale is off")
    rules: list[AutoscaleRuleOut]
    created_at: datetime
    instances: dict[str, int] = Field(description="instance state -> how many (joining, serving, leaving)")


class InstanceOut(Keyed):
    name: str
    index: int
    state: str
    model_version: int
    current_model: bool
    host: str | None
    ip: str | None
    power_state: str | None
    provisioning_state: str | None
    lb_status: str | None
    created_at: datetime


class AutoscaleEventOut(BaseModel):
    at: float = Field(description="unix seconds")
    action: str
    current: int
    target: int
    reason: str
    rule_id: str | None
    evidence: dict[str, float | None]


class TimelineEntryOut(BaseModel):
    at: float = Field(description="unix seconds")
    current: int
    count: int = Field(description="the count after this decision")
    action: str
    target: int
    reason: str
    rule_id: str | None


class FlapOut(BaseModel):
    first_at: float
    first_from: int
    first_to: int
    second_at: float
    second_from: int
    second_to: int
    kind: str


class SimulationOut(BaseModel):
    start: float
    end: float
    step_seconds: float
    timeline: list[TimelineEntryOut]
    max_count: int
    min_count: int
    actions: int
    flaps: list[FlapOut]
    flap_window_seconds: float
    instance_minutes: float
    recorded_instance_minutes: float
    text: str = Field(description="the timeline as `flexvm autoscale simulate` prints it")


class ErrorBody(BaseModel):
    code: str = Field(description="e.g. InvalidInput, AlreadyExists, RequestBodyTooLarge")
    message: str
    details: dict[str, Any] = Field(description="`field` names the bad input, where there is one")


class ErrorOut(BaseModel):
    """Every error answer: Azure's shape."""

    error: ErrorBody
