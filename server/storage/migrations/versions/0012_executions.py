"""Workflow executions and their steps.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates workflow_executions and workflow_step_attempts."""
    op.create_table(
        "workflow_executions",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("workflow_id", sa.String(63), nullable=False),
        sa.Column("workflow_version", sa.Integer, nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("resume_input", sa.JSON, nullable=False),
        sa.Column("output", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("rescues", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(63), nullable=False),
        sa.Column("lease_expires", _TIME, nullable=True),
        sa.Column("create_time", _TIME, nullable=False),
        sa.Column("start_time", _TIME, nullable=True),
        sa.Column("end_time", _TIME, nullable=True),
    )
    op.create_index(
        "ix_workflow_executions_list",
        "workflow_executions",
        ["tenant", "workflow_id", "create_time", "id"],
    )
    op.create_index(
        "ix_workflow_executions_state", "workflow_executions", ["state", "lease_expires"]
    )
    op.create_index(
        "ux_workflow_executions_idempotency",
        "workflow_executions",
        ["tenant", "workflow_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key <> ''"),
        sqlite_where=sa.text("idempotency_key <> ''"),
    )
    op.create_table(
        "workflow_step_attempts",
        sa.Column("execution_id", sa.String(63), primary_key=True),
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("step_name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("input", sa.JSON, nullable=True),
        sa.Column("output", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(63), nullable=False),
        sa.Column("wake_time", _TIME, nullable=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("start_time", _TIME, nullable=False),
        sa.Column("end_time", _TIME, nullable=True),
    )


def downgrade() -> None:
    """Drops the execution tables."""
    op.drop_table("workflow_step_attempts")
    op.drop_index("ux_workflow_executions_idempotency", "workflow_executions")
    op.drop_index("ix_workflow_executions_state", "workflow_executions")
    op.drop_index("ix_workflow_executions_list", "workflow_executions")
    op.drop_table("workflow_executions")
