"""The host pool: advertised capacity, networks and addresses, availability sets, leftovers.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("advertised_cpus", sa.Integer, nullable=True))
        batch.add_column(sa.Column("advertised_memory_mib", sa.Integer, nullable=True))
        batch.add_column(sa.Column("network", sa.String(64), nullable=True))
        batch.add_column(sa.Column("bridge", sa.String(64), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("requires", sa.JSON, nullable=False, server_default="[]"))
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("availability_set", sa.String(64), nullable=True))
        batch.create_index("ix_vms_availability_set", ["availability_set"])
    op.create_table(
        "networks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("subnet", sa.String(64), nullable=False),
        sa.Column("range_start", sa.String(64), nullable=False),
        sa.Column("range_end", sa.String(64), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=True),
        sa.Column("dhcp_hosts_dir", sa.String(512), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "addresses",
        sa.Column("network", sa.String(64), sa.ForeignKey("networks.name"), primary_key=True),
        sa.Column("ip", sa.String(64), primary_key=True),
        sa.Column("vm_id", sa.String(36), nullable=False, index=True),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "availability_sets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("fault_domains", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "leftovers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("leftovers", "availability_sets", "addresses", "networks"):
        op.drop_table(table)
    with op.batch_alter_table("vms") as batch:
        batch.drop_index("ix_vms_availability_set")
        batch.drop_column("availability_set")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("requires")
    with op.batch_alter_table("hosts") as batch:
        for column in ("bridge", "network", "advertised_memory_mib", "advertised_cpus"):
            batch.drop_column(column)
