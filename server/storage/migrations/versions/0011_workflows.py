"""Workflows, their versions and schedules.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates workflows, workflow_versions and workflow_schedules."""
    op.create_table(
        "workflows",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("delete_time", TZ, nullable=True),
    )
    op.create_index("ix_workflows_tenant_create_time", "workflows", ["tenant", "create_time", "id"])
    op.create_table(
        "workflow_versions",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("workflow_id", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
    )
    op.create_table(
        "workflow_schedules",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("workflow_id", sa.String(63), primary_key=True),
        sa.Column("schedule_id", sa.String(63), primary_key=True),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("last_fire_time", TZ, nullable=True),
    )


def downgrade() -> None:
    """Drops the workflow definition tables."""
    op.drop_table("workflow_schedules")
    op.drop_table("workflow_versions")
    op.drop_index("ix_workflows_tenant_create_time", table_name="workflows")
    op.drop_table("workflows")
