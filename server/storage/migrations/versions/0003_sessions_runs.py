"""Create sessions, messages, checkpoints, runs and run_events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates the tables of sessions and runs."""
    op.create_table(
        "sessions",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("parent_session_id", sa.String(63), nullable=False),
        sa.Column("parent_checkpoint_id", sa.String(63), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("admissions", sa.Integer(), nullable=False),
    )
    op.create_index("ix_sessions_tenant_create_time", "sessions", ["tenant", "create_time", "id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(63), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tool_calls", sa.JSON(), nullable=False),
        sa.Column("tool_call_id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(63), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
    )
    op.create_index(
        "ix_messages_session_position", "messages", ["tenant", "session_id", "position"]
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(63), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("last_position", sa.Integer(), nullable=False),
        sa.Column("last_message_id", sa.String(63), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
    )
    op.create_index("ix_checkpoints_session", "checkpoints", ["tenant", "session_id", "turn"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("input_text", sa.Text(), nullable=False),
        sa.Column("input_message_id", sa.String(63), nullable=False),
        sa.Column("result_message_id", sa.String(63), nullable=False),
        sa.Column("result_text", sa.Text(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("background", sa.Boolean(), nullable=False),
        sa.Column("on_disconnect", sa.String(16), nullable=False),
        sa.Column("after_run_id", sa.String(63), nullable=False),
        sa.Column("first_token_ms", sa.Float(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("start_time", TZ, nullable=True),
        sa.Column("end_time", TZ, nullable=True),
    )
    op.create_index("ix_runs_session", "runs", ["tenant", "session_id", "create_time"])
    op.create_index("ix_runs_agent", "runs", ["tenant", "agent_id", "create_time"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "run_events",
        sa.Column("run_id", sa.String(63), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
    )


def downgrade() -> None:
    """Drops the tables of sessions and runs."""
    for table in ("run_events", "runs", "checkpoints", "messages", "sessions"):
        op.drop_table(table)
