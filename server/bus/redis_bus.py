"""The distributed event bus: Redis streams for event topics (runs, rooms,
workflow executions), Redis pub/sub for broadcast control topics (cancel).

Event topics are streams (see `redis_streams`): a replica that was briefly
away or slow still reads what it missed, as long as Redis keeps it, and
idle topics cost no connection. Control topics stay on pub/sub: a cancel
is a broadcast that only matters to replicas listening at that moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from aster.server.bus.base import Message, Subscription
from aster.server.bus.redis_pubsub import RedisPubSub
from aster.server.bus.redis_streams import (
    KEYS_PER_READER,
    MAXLEN,
    PREFIX,
    TIMEOUT_S,
    TTL_S,
    RedisStreams,
)

# Topics broadcast over pub/sub instead of being kept in a stream: the
# cancels of runs, room collaborations and workflow executions (the
# CONTROL_TOPIC of runs/executor.py, rooms/runner.py and
# workflows/execution_worker.py). They matter only to listeners present now.
BROADCAST_TOPICS = frozenset({"control", "room-control", "workflow-control"})
# Connections for publishing and short reads (readers have their own).
MAX_CONNECTIONS = 32


class RedisBus:
    """An `EventBus` over Redis: streams for events, pub/sub for control."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        stream_maxlen: int = MAXLEN,
        stream_ttl_s: int = TTL_S,
        broadcast_topics: Collection[str] = BROADCAST_TOPICS,
        stream_prefix: str = PREFIX,
        keys_per_reader: int = KEYS_PER_READER,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        # Callers beyond `max_connections` at once queue for a connection
        # (many streams opening together) instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=TIMEOUT_S, decode_responses=True
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self.streams = RedisStreams(
            self._redis,
            url,
            prefix=stream_prefix,
            maxlen=stream_maxlen,
            ttl_s=stream_ttl_s,
            keys_per_reader=keys_per_reader,
        )
        self._pubsub = RedisPubSub(self._redis)
        self._broadcast = frozenset(broadcast_topics)

    async def publish(self, topic: str, message: Message) -> None:
        """Sends `message` to every replica's subscribers of `topic`."""
        if topic in self._broadcast:
            await self._pubsub.publish(topic, message)
        else:
            await self.streams.publish(topic, message)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the block."""
        side = self._pubsub if topic in self._broadcast else self.streams
        async with side.subscribe(topic) as subscription:
            yield subscription

    async def ping(self) -> bool:
        """True if Redis answers PING within a second."""
        try:
            async with asyncio.timeout(1.0):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        """Stops the readers and closes the connections."""
        await self.streams.close()
        await self._pubsub.close()
        await self._redis.aclose()
