"""Tables of semantic memories (text, vector, scope, provenance, lineage)
and the per-tenant change counters that keep vector caches fresh."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY.
SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class SemanticMemoryRow(Base):
    """One semantic memory. `seq` orders memories across the database (the
    vector caches load rows after the last `seq` they hold); `(tenant, id)`
    is the memory's identity."""

    __tablename__ = "semantic_memories"

    seq: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(63))
    id: Mapped[str] = mapped_column(String(63))
    text: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    agent_id: Mapped[str] = mapped_column(String(63), default="")
    session_id: Mapped[str] = mapped_column(String(63), default="")
    room_id: Mapped[str] = mapped_column(String(63), default="")
    source_run_id: Mapped[str] = mapped_column(String(63), default="")
    source_session_id: Mapped[str] = mapped_column(String(63), default="")
    source_message_id: Mapped[str] = mapped_column(String(63), default="")
    source_tool_call_id: Mapped[str] = mapped_column(String(128), default="")
    source_working_entry_id: Mapped[str] = mapped_column(String(63), default="")
    embedder: Mapped[str] = mapped_column(String(128))
    embedder_version: Mapped[str] = mapped_column(String(128))
    dimensions: Mapped[int] = mapped_column(Integer)
    # float32, little-endian, unit length.
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    superseded_by: Mapped[str] = mapped_column(String(63), default="")
    consolidated_from: Mapped[list[str]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("tenant", "id", name="uq_semantic_memories_tenant_id"),
        Index("ix_semantic_memories_embedder", "tenant", "embedder", "embedder_version", "seq"),
        Index("ix_semantic_memories_scope", "tenant", "agent_id", "session_id", "room_id"),
        Index("ix_semantic_memories_working", "tenant", "source_working_entry_id"),
    )


class SemanticMemoryGenerationRow(Base):
    """Bumped by every write to one tenant's memories of one embedder, in the
    same transaction: a replica whose cache holds an older generation
    refreshes it before searching."""

    __tablename__ = "semantic_memory_generations"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    embedder_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
