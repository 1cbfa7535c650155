"""Servers: which machine and pid namespace each runs in, so "same machine" is not a hostname.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.add_column(sa.Column("machine", sa.String(80), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("machine")
