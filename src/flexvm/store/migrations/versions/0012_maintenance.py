"""Rolling maintenance: each run's controls (a pause asked for, a pause in force and why, who
asked). Its progress lives in its operation, like every other.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("operation_id", sa.String(36), primary_key=True),
        sa.Column("pause_requested", sa.Boolean, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("asked_by", sa.String(64), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("maintenance_runs")
