"""The embedded event bus: fan-out between tasks of one process."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aster.server.bus.base import Message, Subscription


class InProcessBus:
    """Topics and their subscribers, in memory."""

    name = "in_process"

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)

    def has_subscribers(self, topic: str) -> bool:
        """True while anyone listens to `topic`."""
        return bool(self._subscribers.get(topic))

    def deliver(self, topic: str, message: Message) -> None:
        """Hands `message` to this process's subscribers of `topic`."""
        for subscription in self._subscribers.get(topic, ()):
            subscription.deliver(message)

    async def publish(self, topic: str, message: Message) -> None:
        """Delivers to the subscribers of this process."""
        self.deliver(topic, message)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the block."""
        subscription = Subscription()
        self._subscribers[topic].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[topic]

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def close(self) -> None:
        """Nothing to release."""
