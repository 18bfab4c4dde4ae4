"""Leases on runs: the worker executing a run, and until when.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds lease_owner and lease_expires to runs."""
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(63), nullable=False, server_default=""))
        batch.add_column(sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_runs_status_lease", "runs", ["status", "lease_expires"])


def downgrade() -> None:
    """Drops the lease columns."""
    op.drop_index("ix_runs_status_lease", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_expires")
        batch.drop_column("lease_owner")
