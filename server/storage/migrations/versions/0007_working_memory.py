"""Working memory entries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates working_memory."""
    op.create_table(
        "working_memory",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(63), nullable=False),
        sa.Column("room_id", sa.String(63), nullable=False),
        # Binary collation on PostgreSQL (SQLite's default): code-point order,
        # so List reads the unique index in key order.
        sa.Column(
            "key",
            sa.String(256).with_variant(sa.String(256, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("value_json", sa.Text(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("writer", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.UniqueConstraint(
            "tenant", "agent_id", "session_id", "room_id", "key", name="uq_working_memory_key"
        ),
    )
    op.create_index("ix_working_memory_expire_time", "working_memory", ["expire_time"])


def downgrade() -> None:
    """Drops working_memory."""
    op.drop_index("ix_working_memory_expire_time", "working_memory")
    op.drop_table("working_memory")
