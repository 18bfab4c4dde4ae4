"""DeltaWriter on SQLite and PostgreSQL: text pieces queued faster than the
store takes them are batched, stored in order with no gap, and everything
appended after a flush comes after them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aster.server.bus.in_process import InProcessBus
from aster.server.rooms.deltas import DeltaWriter
from aster.server.storage.database import Database
from aster.server.storage.stream_repository import StreamRepository
from aster.server.streams.log import StreamLog
from aster.server.streams.models import StreamEvent


class CountingLog(StreamLog):
    """A real StreamLog that counts its appends."""

    appends = 0

    async def append_many(self, tenant: str, stream: str, events: Any) -> list[StreamEvent]:
        self.appends += 1
        return await super().append_many(tenant, stream, events)


async def test_pieces_are_batched_in_order_before_what_follows(database: Database) -> None:
    log = CountingLog(StreamRepository(database), InProcessBus())
    writer = DeltaWriter(log, "t1", "room:r1")
    for i in range(200):
        writer.add("delta", {"delta": f"w{i} "})
        await asyncio.sleep(0)  # as a model stream yields between pieces
    await writer.flush()
    await log.append("t1", "room:r1", "message", {"text": "done"})
    stored = await log.read("t1", "room:r1", 0, 1000)
    assert [e.seq for e in stored] == list(range(1, 202))
    assert [e.data.get("delta") for e in stored[:200]] == [f"w{i} " for i in range(200)]
    assert stored[-1].kind == "message"
    # The first piece is stored at once, those queued meanwhile together:
    # a few appends for the 200 pieces (one each before), one for the message.
    assert 2 <= log.appends - 1 <= 50, log.appends


async def test_a_failed_write_fails_the_next_piece_and_flush(database: Database) -> None:
    class Failing(StreamLog):
        async def append_many(self, tenant: str, stream: str, events: Any) -> list[StreamEvent]:
            raise RuntimeError("store down")

    writer = DeltaWriter(Failing(StreamRepository(database), InProcessBus()), "t1", "room:r1")
    writer.add("delta", {"delta": "a"})
    with pytest.raises(RuntimeError, match="store down"):
        await writer.flush()
    with pytest.raises(RuntimeError, match="store down"):
        writer.add("delta", {"delta": "b"})
    await writer.discard()
