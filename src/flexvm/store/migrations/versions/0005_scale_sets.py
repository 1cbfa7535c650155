"""Scale sets, their instances, and the autoscale history.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "scale_sets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("size", sa.String(64), nullable=False),
        sa.Column("image", sa.String(64), nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("fault_domains", sa.Integer, nullable=False),
        sa.Column("scale_in_policy", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("load_balancer", sa.JSON, nullable=True),
        sa.Column("network", sa.String(64), nullable=True),
        sa.Column("user_data", sa.Text, nullable=True),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("max_unavailable", sa.Integer, nullable=False),
        sa.Column("next_index", sa.Integer, nullable=False),
        sa.Column("active_operation_id", sa.String(36), nullable=True),
        sa.Column("deleting", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("replaced", sa.Integer, nullable=False),
        sa.Column("autoscale", sa.JSON, nullable=True),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("last_scale_at", sa.Float, nullable=True),
        sa.Column("last_scale_rule", sa.String(64), nullable=True),
    )
    op.create_table(
        "scale_set_instances",
        sa.Column("vm_name", sa.String(64), primary_key=True),
        sa.Column("scale_set", sa.String(64), nullable=False, index=True),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "autoscale_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scale_set", sa.String(64), nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("current", sa.Integer, nullable=False),
        sa.Column("target", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("evidence", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("autoscale_events")
    op.drop_table("scale_set_instances")
    op.drop_table("scale_sets")
