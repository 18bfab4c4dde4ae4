"""Stream events and heads: durable, cursor-resumable streams of rooms and executions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates stream_heads and stream_events."""
    op.create_table(
        "stream_heads",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("stream", sa.String(127), primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "stream_events",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("stream", sa.String(127), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(63), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drops the stream tables."""
    op.drop_table("stream_events")
    op.drop_table("stream_heads")
