"""Coalesced writes of an agent's text pieces into a room's stream.

A model streams its reply faster than one database transaction per piece:
awaiting each `delta` event's own append made a 200-word reply take a second
or more to reach the room. Pieces are queued instead and appended by one
writer task: the first goes at once, and whatever arrives while a write is in
flight goes together in the next `append_many` (as the run EventLog batches a
run's events). Order is kept (one writer, appends in queue order, seq
assigned by the store), and `flush` must be awaited before anything else of
the collaboration is appended, so every piece precedes the message it
belongs to."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aster.server.storage.stream_repository import NewEvent
from aster.server.streams.log import StreamLog


class DeltaWriter:
    """Appends queued events to one stream, batching those that wait."""

    def __init__(self, log: StreamLog, tenant: str, stream: str) -> None:
        self._log = log
        self._tenant = tenant
        self._stream = stream
        self._pending: list[NewEvent] = []
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    def add(self, kind: str, data: dict[str, Any]) -> None:
        """Queues an event; raises the error of an earlier failed write
        (pieces after a lost one would leave a hole in the text)."""
        if self._failed is not None:
            raise self._failed
        self._pending.append((kind, data))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name=f"room-deltas-{self._stream}")

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._log.append_many(self._tenant, self._stream, batch)
            except Exception as err:
                self._failed = err
                self._pending.clear()
                raise

    async def flush(self) -> None:
        """Waits until every queued event is stored and published; raises
        if a write failed."""
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._failed is not None:
            raise self._failed

    async def discard(self) -> None:
        """Drops queued events and stops the writer (the turn is over)."""
        self._pending.clear()
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
