"""Tables of sessions, their messages and checkpoints, runs and run events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base


class SessionRow(Base):
    """A conversation thread with one agent."""

    __tablename__ = "sessions"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(63))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    parent_session_id: Mapped[str] = mapped_column(String(63), default="")
    parent_checkpoint_id: Mapped[str] = mapped_column(String(63), default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer)
    # Bumped by every run admission: the write takes the row's lock, which
    # serialises admissions of one session on SQLite and PostgreSQL alike.
    admissions: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_sessions_tenant_create_time", "tenant", "create_time", "id"),)


class MessageRow(Base):
    """One message of a session, in order (`position`)."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    session_id: Mapped[str] = mapped_column(String(63))
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    tool_calls: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    tool_call_id: Mapped[str] = mapped_column(String(128), default="")
    run_id: Mapped[str] = mapped_column(String(63), default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # False once a ResumeSession rolled the session back past it.
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (Index("ix_messages_session_position", "tenant", "session_id", "position"),)


class CheckpointRow(Base):
    """The state of a session after a completed run."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    session_id: Mapped[str] = mapped_column(String(63))
    run_id: Mapped[str] = mapped_column(String(63))
    turn: Mapped[int] = mapped_column(Integer)
    message_count: Mapped[int] = mapped_column(Integer)
    last_position: Mapped[int] = mapped_column(Integer)
    last_message_id: Mapped[str] = mapped_column(String(63))
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_checkpoints_session", "tenant", "session_id", "turn"),)


class RunRow(Base):
    """One run of an agent on one message."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    agent_id: Mapped[str] = mapped_column(String(63))
    session_id: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    input_text: Mapped[str] = mapped_column(Text)
    input_message_id: Mapped[str] = mapped_column(String(63), default="")
    result_message_id: Mapped[str] = mapped_column(String(63), default="")
    result_text: Mapped[str] = mapped_column(Text, default="")
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    background: Mapped[bool] = mapped_column(Boolean, default=False)
    on_disconnect: Mapped[str] = mapped_column(String(16))
    # The run this one waits for (ENQUEUE), if any.
    after_run_id: Mapped[str] = mapped_column(String(63), default="")
    first_token_ms: Mapped[float | None] = mapped_column(Float, default=None)
    # The worker executing the run and until when its lease holds; a lease
    # that lapses (its worker died) is rescued as the next attempt.
    lease_owner: Mapped[str] = mapped_column(String(63), default="")
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        Index("ix_runs_session", "tenant", "session_id", "create_time"),
        Index("ix_runs_agent", "tenant", "agent_id", "create_time"),
        Index("ix_runs_status", "status"),
        Index("ix_runs_status_lease", "status", "lease_expires"),
    )


class RunEventRow(Base):
    """One event of a run's stream, kept for replay."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
