"""Durable, cursor-resumable event streams of rooms and workflow
executions: every event is stored (with the next seq of its stream), then
published on the bus; readers replay the store and follow the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import structlog

from aster.server.bus.base import EventBus, Message
from aster.server.clock import as_utc
from aster.server.storage.stream_repository import NewEvent, StreamRepository
from aster.server.streams.follow import replay_then_follow
from aster.server.streams.models import StreamEvent

_log = structlog.get_logger("aster.streams")

# Live events arrive through the bus; this only catches a dropped one.
IDLE_CHECK_S = 10.0


def topic(tenant: str, stream: str) -> str:
    """The bus topic of a stream."""
    return f"stream:{tenant}:{stream}"


def _to_message(event: StreamEvent) -> Message:
    return {
        "tenant": event.tenant,
        "stream": event.stream,
        "seq": event.seq,
        "kind": event.kind,
        "data": event.data,
        "t": event.create_time.isoformat() if event.create_time else None,
    }


def _from_message(message: Message) -> StreamEvent:
    created = message.get("t")
    return StreamEvent(
        tenant=message["tenant"],
        stream=message["stream"],
        seq=int(message["seq"]),
        kind=message["kind"],
        data=message["data"],
        create_time=as_utc(datetime.fromisoformat(created)) if created else None,
    )


class StreamLog:
    """Appends to and follows durable streams."""

    def __init__(
        self, repository: StreamRepository, bus: EventBus, idle_check_s: float = IDLE_CHECK_S
    ) -> None:
        self._repository = repository
        self._bus = bus
        self._idle_check_s = idle_check_s

    async def append(
        self, tenant: str, stream: str, kind: str, data: dict[str, Any]
    ) -> StreamEvent:
        """Stores one event at the end of the stream, then publishes it."""
        (event,) = await self.append_many(tenant, stream, [(kind, data)])
        return event

    async def append_many(
        self, tenant: str, stream: str, events: Sequence[NewEvent]
    ) -> list[StreamEvent]:
        """Stores events at the end of the stream in one transaction, then
        publishes them."""
        stored = await self._repository.append(tenant, stream, events)
        await self.publish(stored)
        return stored

    async def publish(self, events: Sequence[StreamEvent]) -> None:
        """Publishes events already stored (by a repository that stored them
        with its own rows, through `stream_repository.append_in`). A bus
        outage is logged, not raised: readers fill gaps from the store."""
        for event in events:
            try:
                await self._bus.publish(topic(event.tenant, event.stream), _to_message(event))
            except Exception as err:
                _log.warning(
                    "publishing a stream event failed", stream=event.stream, error=str(err)
                )
                return

    async def read(self, tenant: str, stream: str, after_seq: int, limit: int) -> list[StreamEvent]:
        """Up to `limit` stored events with seq > after_seq."""
        return await self._repository.read(tenant, stream, after_seq, limit)

    async def last_seq(self, tenant: str, stream: str) -> int:
        """The seq of the stream's last event (0 when empty)."""
        return await self._repository.last_seq(tenant, stream)

    async def follow(
        self,
        tenant: str,
        stream: str,
        after_seq: int,
        *,
        terminal_kinds: Collection[str] = frozenset(),
        finished: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Every event with seq > after_seq: stored ones, then live ones. Ends
        after an event whose kind is in `terminal_kinds`, or once
        `finished()` says the stream ended and every stored event was
        yielded; otherwise follows until the caller stops iterating."""

        async def read(after: int, limit: int) -> list[StreamEvent]:
            return await self._repository.read(tenant, stream, after, limit)

        async with self._bus.subscribe(topic(tenant, stream)) as live:
            async for event in replay_then_follow(
                read,
                live,
                _from_message,
                after_seq,
                is_last=lambda e: e.kind in terminal_kinds,
                finished=finished,
                idle_check_s=self._idle_check_s,
            ):
                yield event
