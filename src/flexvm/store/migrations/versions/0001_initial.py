"""The first schema: sizes, images, hosts, VMs and operations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "sizes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("disk_bytes", sa.BigInteger, nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("disk_file", sa.String(255), nullable=False),
        sa.Column("virtual_size", sa.BigInteger, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kernel_file", sa.String(255), nullable=True),
        sa.Column("initrd_file", sa.String(255), nullable=True),
        sa.Column("cmdline", sa.Text, nullable=True),
        sa.Column("ready_marker", sa.String(255), nullable=True),
        sa.Column("cloud_init", sa.Boolean, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("uri", sa.String(512), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.Text, nullable=False),
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("disk_capacity_bytes", sa.BigInteger, nullable=False),
        sa.Column("accelerator", sa.String(8), nullable=False),
        sa.Column("accelerator_reason", sa.Text, nullable=False),
        sa.Column("libvirt_version", sa.String(32), nullable=False),
        sa.Column("hypervisor_version", sa.String(32), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("cpu_model", sa.String(128), nullable=False),
        sa.Column("cpu_ratio", sa.Float, nullable=False),
        sa.Column("ram_ratio", sa.Float, nullable=False),
        sa.Column("disk_ratio", sa.Float, nullable=False),
        sa.Column("reserved_memory_mib", sa.Integer, nullable=False),
        sa.Column("fault_domain", sa.String(64), nullable=True),
        sa.Column("last_seen", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "vms",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("size", sa.String(64), nullable=False),
        sa.Column("image", sa.String(64), nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("disk_bytes", sa.BigInteger, nullable=False),
        sa.Column("provisioning_state", sa.String(16), nullable=False),
        sa.Column("power_state", sa.String(16), nullable=False),
        sa.Column("host", sa.String(64), sa.ForeignKey("hosts.name"), nullable=True),
        sa.Column("disk_host", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("ready_at", UTCDateTime, nullable=True),
        sa.Column("boot_seconds", sa.Float, nullable=True),
        sa.Column("user_data", sa.Text, nullable=True),
        sa.Column("active_operation_id", sa.String(36), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("disks", sa.JSON, nullable=False),
        sa.Column("nics", sa.JSON, nullable=False),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False, index=True),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    for table in ("operations", "vms", "hosts", "images", "sizes"):
        op.drop_table(table)
