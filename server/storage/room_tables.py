"""Tables of rooms, their members, messages and collaborations (room runs).
A room's events live in the durable stream `room:<id>` (stream_tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.runs.models import ACTIVE_STATUSES
from aster.server.storage.tables import Base

# A room run that is still going (QUEUED or RUNNING).
ACTIVE_RUN = text("status IN (" + ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES) + ")")


class RoomRow(Base):
    """One room."""

    __tablename__ = "rooms"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    double_text_policy: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_rooms_tenant_create_time", "tenant", "create_time", "id"),)


class RoomMemberRow(Base):
    """One member of a room: an agent (kind `agent`) or a human (`participant`)."""

    __tablename__ = "room_members"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    member_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    # Order of joining (members list and take turns in this order).
    position: Mapped[int] = mapped_column(Integer)
    join_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RoomMessageRow(Base):
    """One message of a room, keyed by the seq of its stream event."""

    __tablename__ = "room_messages"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    agent_id: Mapped[str] = mapped_column(String(63), default="")
    participant_id: Mapped[str] = mapped_column(String(63), default="")
    text: Mapped[str] = mapped_column(Text)
    mentions: Mapped[list[str]] = mapped_column(JSON)
    room_run_id: Mapped[str] = mapped_column(String(63), default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RoomRunRow(Base):
    """One collaboration of a room's agents. `owner` is the replica running
    it, which renews `lease_expires`; a run whose lease lapsed died with its
    replica and is marked FAILED by any other."""

    __tablename__ = "room_runs"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(63))
    task: Mapped[str] = mapped_column(Text)
    strategy: Mapped[str] = mapped_column(String(16))
    max_turns: Mapped[int] = mapped_column(Integer)
    stop_condition: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16))
    turns: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(63), default="")
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        Index("ix_room_runs_room", "tenant", "room_id", "status"),
        Index("ix_room_runs_status", "status"),
        # One active collaboration per room, enforced by the database so that
        # concurrent RunRoom calls on any replicas cannot both start one.
        Index(
            "ux_room_runs_one_active",
            "tenant",
            "room_id",
            unique=True,
            sqlite_where=ACTIVE_RUN,
            postgresql_where=ACTIVE_RUN,
        ),
    )
