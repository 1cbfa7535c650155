"""Flexibility: a VM's ceilings for resizing while it runs, and the host it is moving to.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        # Addresses are handed out round the range, so a freed one is not reused at once (a DHCP
        # server may still hold its lease for the old MAC).
        batch.add_column(sa.Column("last_allocated", sa.String(64), nullable=True))
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("max_size", sa.String(64), nullable=True))
        batch.add_column(sa.Column("max_vcpus", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_memory_mib", sa.Integer, nullable=True))
        # While a migration runs the VM holds room on both hosts; this is the second one.
        batch.add_column(sa.Column("moving_to", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        for column in ("moving_to", "max_memory_mib", "max_vcpus", "max_size"):
            batch.drop_column(column)
    with op.batch_alter_table("networks") as batch:
        batch.drop_column("last_allocated")
