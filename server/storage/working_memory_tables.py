"""Tables of working memory."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base

KEY_TYPE = String(256).with_variant(String(256, collation="C"), "postgresql")


class WorkingMemoryRow(Base):
    """One key of one scope. A scope is the (agent, session, room) triple,
    with "" for the ids it does not name; the key is unique within it."""

    __tablename__ = "working_memory"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(63), default="")
    session_id: Mapped[str] = mapped_column(String(63), default="")
    room_id: Mapped[str] = mapped_column(String(63), default="")
    # Binary ("C") collation on PostgreSQL, as SQLite's default: keys sort by
    # code point, and List walks the unique index in key order.
    key: Mapped[str] = mapped_column(KEY_TYPE)
    # The value as compact JSON text, so every JSON value (null included)
    # round-trips exactly on both backends.
    value_json: Mapped[str] = mapped_column(Text)
    ttl_seconds: Mapped[int] = mapped_column(Integer, default=0)
    expire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    writer: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint(
            "tenant", "agent_id", "session_id", "room_id", "key", name="uq_working_memory_key"
        ),
        Index("ix_working_memory_expire_time", "expire_time"),
    )
