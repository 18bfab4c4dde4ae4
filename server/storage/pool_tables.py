"""The table of pooled agents: membership and hibernated state, shared by
every replica."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base


class PoolAgentRow(Base):
    """One agent in the pool. LIVE rows name the replica holding the agent
    and until when it vouches for it (renewed while it stays live)."""

    __tablename__ = "pool_agents"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    replica: Mapped[str] = mapped_column(String(63), default="")
    live_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_use_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    hibernate_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        # Deleting the agent takes it out of the pool in the same statement.
        ForeignKeyConstraint(
            ["tenant", "agent_id"],
            ["agents.tenant", "agents.id"],
            ondelete="CASCADE",
            name="fk_pool_agents_agent",
        ),
        Index("ix_pool_agents_tenant_create_time", "tenant", "create_time", "agent_id"),
        Index("ix_pool_agents_replica", "replica"),
    )
