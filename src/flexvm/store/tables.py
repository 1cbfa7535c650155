"""SQLAlchemy tables. Portable column types only (SQLite by default, PostgreSQL by URL).

The schema itself is created by the Alembic revisions in ``migrations/versions``; keep the two
in step (tests/unit/test_store.py checks that they agree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flexvm.store.db import UTCDateTime, utcnow


class Base(DeclarativeBase):
    pass


class SizeRow(Base):
    __tablename__ = "sizes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_bytes: Mapped[int] = mapped_column(BigInteger)
    family: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImageRow(Base):
    __tablename__ = "images"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(16))
    disk_file: Mapped[str] = mapped_column(String(255))
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    kernel_file: Mapped[str | None] = mapped_column(String(255), nullable=True)
    initrd_file: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cmdline: Mapped[str | None] = mapped_column(Text, nullable=True)
    ready_marker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cloud_init: Mapped[bool] = mapped_column(Boolean, default=False)
    requires: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HostRow(Base):
    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    uri: Mapped[str] = mapped_column(String(512), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str] = mapped_column(Text, default="")
    cpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    accelerator: Mapped[str] = mapped_column(String(8))
    accelerator_reason: Mapped[str] = mapped_column(Text, default="")
    libvirt_version: Mapped[str] = mapped_column(String(32), default="")
    hypervisor_version: Mapped[str] = mapped_column(String(32), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    cpu_model: Mapped[str] = mapped_column(String(128), default="")
    cpu_ratio: Mapped[float] = mapped_column(Float, default=4.0)
    ram_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    disk_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    reserved_memory_mib: Mapped[int] = mapped_column(Integer, default=512)
    fault_domain: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    advertised_cpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    advertised_memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    network: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bridge: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fence_agent: Mapped[str] = mapped_column(String(16), default="none")
    fence_options: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    suspect_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NetworkRow(Base):
    __tablename__ = "networks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    subnet: Mapped[str] = mapped_column(String(64))
    range_start: Mapped[str] = mapped_column(String(64))
    range_end: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dhcp_hosts_dir: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_allocated: Mapped[str | None] = mapped_column(String(64), nullable=True)


class StorageRow(Base):
    """A shared directory every host sees at ``path`` (see model.storage)."""

    __tablename__ = "storages"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MaintenanceRunRow(Base):
    """A rolling maintenance run's controls: a pause asked for, a pause in force and why
    (its progress is its operation's, ``operation_id``)."""

    __tablename__ = "maintenance_runs"
    operation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    asked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AddressRow(Base):
    """One reserved address. The primary key makes a double reservation impossible."""

    __tablename__ = "addresses"
    network: Mapped[str] = mapped_column(ForeignKey("networks.name"), primary_key=True)
    ip: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(String(36), index=True)
    mac: Mapped[str] = mapped_column(String(17))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The VM's project: its address is in that project's filter (see model.network).
    project: Mapped[str] = mapped_column(String(24), default="default", server_default="default")


class NetworkBlockRow(Base):
    """A block of a network's range that is one project's: its guests' addresses come from it.
    The primary key makes one block two projects' impossible."""

    __tablename__ = "network_blocks"
    network: Mapped[str] = mapped_column(ForeignKey("networks.name"), primary_key=True)
    cidr: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(24), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_allocated: Mapped[str | None] = mapped_column(String(64), nullable=True)  # where its next search starts


class AvailabilitySetRow(Base):
    __tablename__ = "availability_sets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    fault_domains: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LeftoverRow(Base):
    __tablename__ = "leftovers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VmRow(Base):
    __tablename__ = "vms"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(64))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_bytes: Mapped[int] = mapped_column(BigInteger)
    provisioning_state: Mapped[str] = mapped_column(String(16))
    power_state: Mapped[str] = mapped_column(String(16))
    # The host whose capacity the VM holds. NULL once deallocated: a deallocated VM claims nothing.
    host: Mapped[str | None] = mapped_column(ForeignKey("hosts.name"), nullable=True)
    # Where the VM's disk lives, kept when deallocated so a start can find it.
    disk_host: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    boot_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    active_operation_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    disks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    nics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    availability_set: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    max_size: Mapped[str | None] = mapped_column(String(64), nullable=True)
    max_vcpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    moving_to: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Shared storage its disks are on (NULL: its host's own pool); the path is kept beside the
    # name because a storage's path never changes while a VM uses it.
    storage: Mapped[str | None] = mapped_column(ForeignKey("storages.name"), nullable=True)
    storage_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    ha: Mapped[bool] = mapped_column(Boolean, default=False)
    ha_priority: Mapped[int] = mapped_column(Integer, default=0)
    unavailable: Mapped[str | None] = mapped_column(Text, nullable=True)


class OperationRow(Base):
    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    target_kind: Mapped[str] = mapped_column(String(16))
    target_name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    fence: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    claims: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class ServerRow(Base):
    """One `flexvm serve` process: who it is, where it answers, and when it last said it lives."""

    __tablename__ = "servers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    process_started: Mapped[str] = mapped_column(String(32), default="")  # from /proc: tells a reused pid
    # The kernel's boot id and the pid namespace: where the pid means something ("" before 0007).
    machine: Mapped[str] = mapped_column(String(80), default="", server_default="")
    url: Mapped[str] = mapped_column(String(255), default="")
    version: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LeaseRow(Base):
    """A named role one server holds at a time (the leader of the periodic work). ``epoch`` rises
    with every new holder: it is the fencing number the holder's writes check."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(36), nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    expires: Mapped[float] = mapped_column(Float, default=0.0)


class MetricSampleRow(Base):
    """One measured value. Times are Unix seconds (float): cheap to compare and to bucket."""

    __tablename__ = "metric_samples"
    __table_args__ = (Index("ix_metric_samples_series", "kind", "subject", "metric", "ts"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "vm" or "host"
    subject: Mapped[str] = mapped_column(String(64))  # the VM's or host's name
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class MetricRollupRow(Base):
    """Per-minute average, minimum and maximum of one series, kept after the raw samples go."""

    __tablename__ = "metric_rollups"
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[float] = mapped_column(Float, primary_key=True)  # the minute's start, Unix seconds
    avg: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)


class ScaleSetRow(Base):
    __tablename__ = "scale_sets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[str] = mapped_column(String(64))
    image: Mapped[str] = mapped_column(String(64))
    capacity: Mapped[int] = mapped_column(Integer)
    fault_domains: Mapped[int] = mapped_column(Integer)
    scale_in_policy: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    load_balancer: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    network: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[int] = mapped_column(Integer, default=1)
    max_unavailable: Mapped[int] = mapped_column(Integer, default=1)
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    active_operation_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    replaced: Mapped[int] = mapped_column(Integer, default=0)
    autoscale: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    last_scale_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_scale_rule: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ScaleSetInstanceRow(Base):
    __tablename__ = "scale_set_instances"
    vm_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    scale_set: Mapped[str] = mapped_column(String(64), index=True)
    index: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AutoscaleEventRow(Base):
    __tablename__ = "autoscale_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scale_set: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))
    current: Mapped[int] = mapped_column(Integer)
    target: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    rule_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ProjectRow(Base):
    """A project (Azure's resource group). Quotas are NULL where the project has no limit."""

    __tablename__ = "projects"
    name: Mapped[str] = mapped_column(String(24), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    quota_vcpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_memory_mib: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_vms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quota_disk_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserRow(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TokenRow(Base):
    """A user's API token. Only its SHA-256 is kept: the secret is shown once, at creation.
    ``role`` and ``project`` narrow it below its user's rights (NULL: as the user)."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project: Mapped[str | None] = mapped_column(String(24), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RoleAssignmentRow(Base):
    """A role a user holds on one project, or on the whole platform (``project`` NULL)."""

    __tablename__ = "role_assignments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    project: Mapped[str | None] = mapped_column(String(24), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEventRow(Base):
    """One change or refused attempt. Rows are only ever added (no code updates or deletes them)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    token_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    address: Mapped[str] = mapped_column(String(64), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(128))
    project: Mapped[str | None] = mapped_column(String(24), nullable=True, index=True)
    resource: Mapped[str] = mapped_column(String(128), default="")
    request_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
