"""Shared storage: directories every host sees at the same path (``storages``), and the one a VM's
disks are on (``vms.storage``; NULL for every VM made before, whose disks stay on their host).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flexvm.store.db import UTCDateTime

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "storages",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(512), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("storage", sa.String(64), nullable=True))
        batch.add_column(sa.Column("storage_path", sa.String(512), nullable=True))
        batch.create_foreign_key("fk_vms_storage", "storages", ["storage"], ["name"])


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint("fk_vms_storage", type_="foreignkey")
        batch.drop_column("storage_path")
        batch.drop_column("storage")
    op.drop_table("storages")
