"""Isolated networks: each project's guests take addresses from blocks of the range that are its
own (``network_blocks``), and every reserved address records its project. Addresses reserved before
keep their place: they are their projects' strays (see ``model.network``), read from the VM's key.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("addresses") as batch:
        batch.add_column(sa.Column("project", sa.String(24), nullable=False, server_default="default"))
    vms = sa.table("vms", sa.column("id", sa.String), sa.column("name", sa.String))
    addresses = sa.table("addresses", sa.column("vm_id", sa.String), sa.column("project", sa.String))
    connection = op.get_bind()
    for vm_id, name in connection.execute(sa.select(vms.c.id, vms.c.name)):
        project, dot, _ = name.partition(".")
        if dot:
            connection.execute(addresses.update().where(addresses.c.vm_id == vm_id).values(project=project))
    op.create_table(
        "network_blocks",
        sa.Column("network", sa.String(64), sa.ForeignKey("networks.name"), primary_key=True),
        sa.Column("cidr", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(24), nullable=False, index=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_allocated", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("network_blocks")
    with op.batch_alter_table("addresses") as batch:
        batch.drop_column("project")
