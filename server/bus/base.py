"""The event bus: one interface, in-process and Redis implementations."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

# A subscriber that falls this far behind is told it lagged and must re-read
# what it missed from the durable store.
QUEUE_LIMIT = 10_000


class Lagged:
    """Delivered instead of messages a slow subscriber missed."""


LAGGED = Lagged()

Message = dict[str, Any]


class Subscription:
    """Messages of one topic, in publication order."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Message | Lagged] = asyncio.Queue()
        self._lagged = False

    def deliver(self, message: Message) -> None:
        """Queues `message` (or marks the subscription lagged when full)."""
        if self._lagged:
            return
        if self._queue.qsize() >= QUEUE_LIMIT:
            self._lagged = True
            self._queue.put_nowait(LAGGED)
            return
        self._queue.put_nowait(message)

    def lag(self) -> None:
        """Tells the subscriber it may have missed messages (the bus lost
        them, e.g. while its store was unreachable): it gets LAGGED next,
        then only messages delivered after it took LAGGED."""
        if self._lagged:
            return
        self._lagged = True
        self._queue.put_nowait(LAGGED)

    async def get(self, wait_s: float | None = None) -> Message | Lagged | None:
        """The next message, LAGGED, or None after `wait_s` seconds."""
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that
        # arrives together with a message, and the cancelled task goes on.
        try:
            async with asyncio.timeout(wait_s):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, Lagged):
            self._lagged = False
        return item


class EventBus(Protocol):
    """Publishes messages to topics; subscribers get those published after
    they subscribed. Durability is not the bus's job: readers fill gaps from
    the store."""

    name: str

    async def publish(self, topic: str, message: Message) -> None:
        """Sends `message` to every subscriber of `topic`, on every replica."""
        ...

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[Subscription]:
        """A subscription to `topic` for the duration of the block."""
        ...

    async def ping(self) -> bool:
        """True if the bus can deliver messages now."""
        ...

    async def close(self) -> None:
        """Releases connections and tasks."""
        ...
