"""The only code that reads and writes durable streams in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from aster.server.clock import as_utc, utcnow
from aster.server.storage.database import Database
from aster.server.storage.stream_tables import StreamEventRow, StreamHeadRow
from aster.server.streams.models import StreamEvent

# (kind, data) of an event to append.
NewEvent = tuple[str, dict[str, Any]]


def _event(row: StreamEventRow) -> StreamEvent:
    return StreamEvent(
        tenant=row.tenant,
        stream=row.stream,
        seq=row.seq,
        kind=row.kind,
        data=row.data,
        create_time=as_utc(row.create_time),
    )


class StreamRepository:
    """Streams of events, scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self, tenant: str, stream: str, events: Sequence[NewEvent]
    ) -> list[StreamEvent]:
        """Stores `events` at the end of the stream in one transaction."""
        async with self._db.session() as db:
            return await append_in(db, tenant, stream, events)

    async def read(self, tenant: str, stream: str, after_seq: int, limit: int) -> list[StreamEvent]:
        """Up to `limit` stored events with seq > after_seq, in order."""
        async with self._db.session() as db:
            rows = await db.scalars(
                select(StreamEventRow)
                .where(
                    StreamEventRow.tenant == tenant,
                    StreamEventRow.stream == stream,
                    StreamEventRow.seq > after_seq,
                )
                .order_by(StreamEventRow.seq)
                .limit(limit)
            )
            return [_event(row) for row in rows]

    async def last_seq(self, tenant: str, stream: str) -> int:
        """The seq of the stream's last event (0 when it has none)."""
        async with self._db.session() as db:
            last = await db.scalar(
                select(StreamHeadRow.last_seq).where(
                    StreamHeadRow.tenant == tenant, StreamHeadRow.stream == stream
                )
            )
            return int(last or 0)

    async def delete(self, tenant: str, stream: str) -> None:
        """Deletes the stream's events and head."""
        async with self._db.session() as db:
            await delete_in(db, tenant, stream)


async def append_in(
    db: AsyncSession, tenant: str, stream: str, events: Sequence[NewEvent]
) -> list[StreamEvent]:
    """Appends `events` inside the caller's transaction `db`, so that a
    repository can store a row and its event atomically. The stream's head
    row stays locked until that transaction ends."""
    if not events:
        return []
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    count = len(events)
    bump = (
        insert(StreamHeadRow)
        .values(tenant=tenant, stream=stream, last_seq=count)
        .on_conflict_do_update(
            index_elements=[StreamHeadRow.tenant, StreamHeadRow.stream],
            set_={"last_seq": StreamHeadRow.last_seq + count},
        )
        .returning(StreamHeadRow.last_seq)
    )
    last = int((await db.execute(bump)).scalar_one())
    now = utcnow()
    stored = [
        StreamEvent(tenant, stream, last - count + 1 + i, kind, data, now)
        for i, (kind, data) in enumerate(events)
    ]
    db.add_all(
        StreamEventRow(
            tenant=e.tenant,
            stream=e.stream,
            seq=e.seq,
            kind=e.kind,
            data=e.data,
            create_time=now,
        )
        for e in stored
    )
    return stored


async def delete_in(db: AsyncSession, tenant: str, stream: str) -> None:
    """Deletes the stream's events and head inside the caller's transaction."""
    for table in (StreamEventRow, StreamHeadRow):
        await db.execute(delete(table).where(table.tenant == tenant, table.stream == stream))
