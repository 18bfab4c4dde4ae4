"""The distributed event bus: Redis pub/sub between replicas, one connection
per process, fanned out locally. (Durable replay comes from the database.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from aster.server.bus.base import Message, Subscription
from aster.server.bus.in_process import InProcessBus

_log = structlog.get_logger("aster.bus")
PREFIX = "aster:"


class RedisBus:
    """Publishes through Redis; subscriptions share one pub/sub connection."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self._redis = aioredis.from_url(url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._local = InProcessBus()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def publish(self, topic: str, message: Message) -> None:
        """Sends `message` to every replica's subscribers of `topic`."""
        await self._redis.publish(PREFIX + topic, json.dumps(message, separators=(",", ":")))

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the block."""
        async with self._lock:
            first = not self._local.has_subscribers(topic)
            manager = self._local.subscribe(topic)
            subscription = await manager.__aenter__()
            if first:
                try:
                    await self._pubsub.subscribe(PREFIX + topic)
                except BaseException:
                    await manager.__aexit__(None, None, None)
                    raise
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")
        try:
            yield subscription
        finally:
            async with self._lock:
                await manager.__aexit__(None, None, None)
                if not self._local.has_subscribers(topic):
                    with contextlib.suppress(RedisError):
                        await self._pubsub.unsubscribe(PREFIX + topic)

    async def _read(self) -> None:
        while True:
            try:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                raw = await self._pubsub.get_message(timeout=1.0)
            except RedisError as err:
                _log.warning("redis bus read failed; retrying", error=str(err))
                await asyncio.sleep(0.5)
                continue
            if raw is None or raw.get("type") != "message":
                continue
            try:
                channel = raw["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                self._local.deliver(channel.removeprefix(PREFIX), json.loads(raw["data"]))
            except (ValueError, KeyError, AttributeError) as err:
                _log.warning("ignoring a malformed bus message", error=str(err))

    async def ping(self) -> bool:
        """True if Redis answers PING within a second."""
        try:
            async with asyncio.timeout(1.0):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        """Stops the reader and closes the connections."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()
