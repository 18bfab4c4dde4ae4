"""Pooled agents and their hibernated state.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates pool_agents."""
    op.create_table(
        "pool_agents",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("agent_id", sa.String(63), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("replica", sa.String(63), nullable=False, server_default=""),
        sa.Column("live_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_use_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hibernate_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        # Deleting the agent takes it out of the pool in the same statement.
        sa.ForeignKeyConstraint(
            ["tenant", "agent_id"],
            ["agents.tenant", "agents.id"],
            ondelete="CASCADE",
            name="fk_pool_agents_agent",
        ),
    )
    op.create_index(
        "ix_pool_agents_tenant_create_time", "pool_agents", ["tenant", "create_time", "agent_id"]
    )
    op.create_index("ix_pool_agents_replica", "pool_agents", ["replica"])


def downgrade() -> None:
    """Drops pool_agents."""
    op.drop_index("ix_pool_agents_replica", "pool_agents")
    op.drop_index("ix_pool_agents_tenant_create_time", "pool_agents")
    op.drop_table("pool_agents")
