"""Failover: each host's fence agent and since when it has missed its checks; each VM's
high-availability flag and priority, and why it is unavailable while its host is fenced. Hosts
made before have no agent (a host that stops answering is marked down, as before) and VMs no HA.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("fence_agent", sa.String(16), nullable=False, server_default="none"))
        batch.add_column(sa.Column("fence_options", sa.JSON, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("suspect_since", UTCDateTime, nullable=True))
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("ha", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("ha_priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("unavailable", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("unavailable")
        batch.drop_column("ha_priority")
        batch.drop_column("ha")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("suspect_since")
        batch.drop_column("fence_options")
        batch.drop_column("fence_agent")
