"""Broadcast topics over Redis pub/sub: fire-and-forget messages to every
replica (the run cancel channel). One pub/sub connection per process,
fanned out locally. Nothing is kept: a replica that is not connected when a
message is published never sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from aster.server.bus.base import Message, Subscription
from aster.server.bus.in_process import InProcessBus

_log = structlog.get_logger("aster.bus")
PREFIX = "aster:"


class RedisPubSub:
    """Publishes with PUBLISH; subscriptions share one pub/sub connection
    of `redis` (whose pool this does not own)."""

    def __init__(self, redis: aioredis.Redis, prefix: str = PREFIX) -> None:
        self._redis = redis
        self._prefix = prefix
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._local = InProcessBus()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closing = False

    async def publish(self, topic: str, message: Message) -> None:
        """Sends `message` to every replica's subscribers of `topic`."""
        await self._redis.publish(self._prefix + topic, json.dumps(message, separators=(",", ":")))

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the block."""
        async with self._lock:
            first = not self._local.has_subscribers(topic)
            manager = self._local.subscribe(topic)
            subscription = await manager.__aenter__()
            if first:
                try:
                    await self._pubsub.subscribe(self._prefix + topic)
                except BaseException:
                    await manager.__aexit__(None, None, None)
                    raise
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(), name="redis-pubsub-reader")
        try:
            yield subscription
        finally:
            async with self._lock:
                await manager.__aexit__(None, None, None)
                if not self._local.has_subscribers(topic):
                    with contextlib.suppress(RedisError):
                        await self._pubsub.unsubscribe(self._prefix + topic)

    async def _read(self) -> None:
        # Not `while True`: a cancel redis-py loses would leave this running.
        while not self._closing:
            try:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                raw = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as err:
                if self._closing:
                    return
                # redis-py resubscribes on the next read once Redis is back.
                _log.warning("redis pub/sub read failed; retrying", error=str(err))
                await asyncio.sleep(0.5)
                continue
            if raw is None or raw.get("type") != "message":
                continue
            try:
                channel = raw["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else channel
                self._local.deliver(channel.removeprefix(self._prefix), json.loads(raw["data"]))
            except (ValueError, KeyError, AttributeError) as err:
                _log.warning("ignoring a malformed bus message", error=str(err))

    async def close(self) -> None:
        """Stops the reader and closes the pub/sub connection."""
        self._closing = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            # get_message returns within a second, so the loop sees
            # `_closing` even if the cancel itself was lost.
            await asyncio.wait({reader}, timeout=2.0)
        # redis-py types aclose() in some releases and not in others.
        pubsub: Any = self._pubsub
        await pubsub.aclose()
