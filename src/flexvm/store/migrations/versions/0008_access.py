"""Many people on one platform: projects (with quotas), users, hashed tokens, role assignments
and the audit trail. What existed before is the ``default`` project's.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("name", sa.String(24), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("quota_vcpus", sa.Integer, nullable=True),
        sa.Column("quota_memory_mib", sa.Integer, nullable=True),
        sa.Column("quota_vms", sa.Integer, nullable=True),
        sa.Column("quota_disk_bytes", sa.BigInteger, nullable=True),
        sa.Column("quota_instances", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.bulk_insert(projects, [{"name": "default", "description": "", "created_at": datetime.now(UTC)}])
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("user", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=True),
        sa.Column("project", sa.String(24), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
    )
    op.create_table(
        "role_assignments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("project", sa.String(24), nullable=True, index=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False, index=True),
        sa.Column("user", sa.String(64), nullable=True, index=True),
        sa.Column("token_id", sa.String(16), nullable=True),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("project", sa.String(24), nullable=True, index=True),
        sa.Column("resource", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("audit_events", "role_assignments", "tokens", "users", "projects"):
        op.drop_table(table)
