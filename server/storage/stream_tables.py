"""Tables of durable event streams: their events and each stream's head."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base


class StreamHeadRow(Base):
    """The last seq handed out in a stream. Appending bumps it in the same
    transaction as the events, which serialises appenders of one stream on
    every replica and makes commits arrive in seq order."""

    __tablename__ = "stream_heads"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    stream: Mapped[str] = mapped_column(String(127), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class StreamEventRow(Base):
    """One event of a stream."""

    __tablename__ = "stream_events"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    stream: Mapped[str] = mapped_column(String(127), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(63))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
