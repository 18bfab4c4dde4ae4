"""SQLAlchemy table definitions. Alembic migrations must match them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The declarative base of every table."""


class AgentRow(Base):
    """One agent. The primary key includes the tenant, so tenants never
    collide and every query must name one."""

    __tablename__ = "agents"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    instructions: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[dict[str, Any]] = mapped_column(JSON)
    tools: Mapped[list[str]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    state: Mapped[str] = mapped_column(String(16))
    # The agent's MemoryConfig (migration 0008); NULL means the defaults.
    memory: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_agents_tenant_create_time", "tenant", "create_time", "id"),)
