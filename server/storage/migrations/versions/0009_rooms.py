"""Rooms, members and messages.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates rooms, room_members, room_messages and room_runs."""
    op.create_table(
        "rooms",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("double_text_policy", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("update_time", TZ, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    op.create_index("ix_rooms_tenant_create_time", "rooms", ["tenant", "create_time", "id"])
    op.create_table(
        "room_members",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("room_id", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("member_id", sa.String(63), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("join_time", TZ, nullable=False),
    )
    op.create_table(
        "room_messages",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("room_id", sa.String(63), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("participant_id", sa.String(63), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("mentions", sa.JSON(), nullable=False),
        sa.Column("room_run_id", sa.String(63), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
    )
    op.create_table(
        "room_runs",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("room_id", sa.String(63), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("max_turns", sa.Integer(), nullable=False),
        sa.Column("stop_condition", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(63), nullable=False),
        sa.Column("lease_expires", TZ, nullable=True),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("end_time", TZ, nullable=True),
    )
    op.create_index("ix_room_runs_room", "room_runs", ["tenant", "room_id", "status"])
    op.create_index("ix_room_runs_status", "room_runs", ["status"])
    # At most one active (QUEUED or RUNNING) collaboration per room.
    active = sa.text("status IN ('QUEUED', 'RUNNING')")
    op.create_index(
        "ux_room_runs_one_active",
        "room_runs",
        ["tenant", "room_id"],
        unique=True,
        sqlite_where=active,
        postgresql_where=active,
    )


def downgrade() -> None:
    """Drops the room tables."""
    op.drop_table("room_runs")
    op.drop_table("room_messages")
    op.drop_table("room_members")
    op.drop_table("rooms")
