"""Topics as Redis streams: the live tail of every run, room and workflow
execution, readable from every replica.

Publishing is one round trip: `XADD aster:stream:<topic> MAXLEN ~ maxlen`
(Redis keeps at least the last `maxlen` entries) and `EXPIRE` (the key goes
`ttl_s` after its last message, so finished streams do not pile up).

Reading: one reader task per process (per `keys_per_reader` topics, so a
process with thousands of subscribed topics gets one per 100)
blocks in one `XREAD BLOCK` over every key it serves, from the last entry
it has seen of each, and hands what it gets to the local subscribers. An
idle topic costs a dict entry here and a key in that one XREAD: no
connection, no task and no Redis memory of its own. A reader is woken to
take a newly subscribed key into its XREAD by an entry added to a stream
of its own (`aster:bus-wake:<id>`), which its XREAD always includes, so no
subscription waits for the block timeout.

A subscription starts at the newest entry of its stream when it
subscribed, so it sees what is published after that, never before. It is
told it LAGGED (and re-reads the durable store) when messages may have
been lost: its queue overflowed, Redis trimmed entries the reader had not
read yet, a new subscription could not read its start, or Redis became
unreachable (and again when it is back). The reader reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aster.server.bus.base import Message, Subscription

_log = structlog.get_logger("aster.bus")

PREFIX = "aster:stream:"
WAKE_PREFIX = "aster:bus-wake:"
# Entries kept per stream (at least; trimming is approximate, by whole nodes).
MAXLEN = 1000
# A stream is deleted this long after its last message.
TTL_S = 3600
# An XREAD with nothing to read returns after this (then blocks again).
BLOCK_S = 5.0
# How long closing waits for a reader to stop before cutting its connection.
CLOSE_WAIT_S = 1.0
# Entries read per stream per XREAD; at most MAXLEN, so that a reader behind
# by more than Redis kept always reads a full batch and checks for trimming.
COUNT = 500
# Topics one reader (one connection) serves. Every XREAD carries all of
# them, so a busy stream re-sends its reader's idle keys on each read: with
# 1,000 per reader a message on a busy stream cost ~3 ms of CPU one at a
# time, with 100 ~0.8 ms (0.5 ms alone); 10,000 watched streams then take
# 100 connections per process, which Redis handles easily.
KEYS_PER_READER = 100
# The wait before reconnecting after a failure, doubling up to the maximum.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0
# Seconds a publish or a subscription's start read may take.
TIMEOUT_S = 5.0


def entry_id(value: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`) as a comparable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


class _Topic:
    """A subscribed topic: its key, the last entry read, its subscribers."""

    __slots__ = ("key", "last", "reader", "subscribers")

    def __init__(self, key: str, last: str | None, reader: _Reader) -> None:
        self.key = key
        # None until the start could be read (Redis was unreachable).
        self.last = last
        self.reader = reader
        self.subscribers: set[Subscription] = set()

    def lag(self) -> None:
        for subscription in self.subscribers:
            subscription.lag()


class _Reader:
    """One connection blocked in XREAD over the keys of its topics."""

    def __init__(self, owner: RedisStreams, url: str) -> None:
        self._owner = owner
        self._conn = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            single_connection_client=True,
            socket_timeout=owner.block_s + TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            # Every failure surfaces, so subscribers are told they lagged.
            retry=Retry(NoBackoff(), 0),
        )
        self.topics: dict[str, _Topic] = {}
        self.wake_key = f"{WAKE_PREFIX}{uuid.uuid4().hex}"
        self._wake_last = "0-0"
        self._wake_pending = False
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failing = False

    def add(self, topic: str, state: _Topic) -> None:
        """Serves `topic` from the next XREAD on."""
        self.topics[topic] = state
        self._wanted.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="redis-stream-reader")

    async def wake(self) -> None:
        """Makes a blocked XREAD return, so that the next one carries the
        keys added since. Wakes already on their way are not repeated."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await self._owner.add_entry(self.wake_key, {"w": "1"}, maxlen=1)
        except (RedisError, OSError) as err:
            # The reader is failing too, and re-reads its keys when it retries.
            self._wake_pending = False
            _log.debug("could not wake the stream reader", error=str(err))

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        # Not `while True`: redis-py can turn the cancel of a blocked XREAD
        # into a connection error, which the retry below would swallow.
        while not self._closing:
            if not self.topics:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            try:
                if self.failing:
                    await self._conn.ping()
                    self._recovered()
                await self._read_once()
            except (RedisError, OSError) as err:
                if self._closing:
                    return
                self._failed(err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S

    async def _read_once(self) -> None:
        self._wake_pending = False
        unresolved = [state for state in self.topics.values() if state.last is None]
        if unresolved:
            for state in unresolved:
                state.last = await self._owner.newest_id(self._conn, state.key)
        streams: dict[Any, Any] = {self.wake_key: self._wake_last}
        for state in self.topics.values():
            if state.last is not None:
                streams[state.key] = state.last
        reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] | None = await self._conn.xread(
            streams, count=self._owner.count, block=int(self._owner.block_s * 1000)
        )  # type: ignore[assignment]
        for key, entries in reply or ():
            if key == self.wake_key:
                self._wake_last = entries[-1][0]
                continue
            await self._dispatch(key, entries)

    async def _dispatch(self, key: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        state = self.topics.get(key.removeprefix(self._owner.prefix))
        if state is None or state.last is None or state.key != key:
            return  # unsubscribed meanwhile
        floor = entry_id(state.last)
        fresh = [(i, fields) for i, fields in entries if entry_id(i) > floor]
        if not fresh:
            return  # read for a subscription that has since started anew
        if len(entries) >= self._owner.count and await self._trimmed_after(key, floor):
            _log.warning("a stream reader fell behind Redis's trimming", key=key)
            state.lag()
        for identifier, fields in fresh:
            try:
                message = json.loads(fields["m"])
            except (KeyError, ValueError) as err:
                _log.warning("ignoring a malformed stream entry", key=key, error=str(err))
                continue
            for subscription in list(state.subscribers):
                subscription.deliver(message)
            state.last = identifier
        state.last = fresh[-1][0]

    async def _trimmed_after(self, key: str, floor: tuple[int, int]) -> bool:
        """True if Redis may have trimmed entries newer than `floor` (the
        last one read): the stream's oldest entry is past it. (Redis does
        not record what trimming removed; this errs towards LAGGED.)"""
        info = await self._conn.xinfo_stream(key)
        first = info.get("first-entry")
        return first is not None and entry_id(str(first[0])) > floor

    def _failed(self, err: Exception) -> None:
        if not self.failing:
            _log.warning("redis stream reader failed; reconnecting", error=str(err))
            self.failing = True
        for state in self.topics.values():
            state.lag()

    def _recovered(self) -> None:
        _log.info("redis stream reader reconnected")
        self.failing = False
        # What was published while Redis was away is in the store only.
        for state in self.topics.values():
            state.lag()

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A cancel that lands just as XREAD's reply arrives can be lost
            # inside redis-py, leaving the task blocked for the block timeout;
            # closing the connection ends that read at once.
            if not (await asyncio.wait({task}, timeout=CLOSE_WAIT_S))[0]:
                with contextlib.suppress(RedisError, OSError):
                    await self._conn.connection_pool.disconnect()
                    if self._conn.connection is not None:
                        await self._conn.connection.disconnect(nowait=True)
                await asyncio.wait({task}, timeout=CLOSE_WAIT_S)
            if task.done() and not task.cancelled() and task.exception() is not None:
                _log.warning("redis stream reader ended with an error", error=str(task.exception()))
        await self._conn.aclose()


class RedisStreams:
    """Publishes to and reads from one Redis stream per topic.

    `redis` (not owned) serves publishing and the short reads; each reader
    opens its own connection from `url`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        url: str,
        *,
        prefix: str = PREFIX,
        maxlen: int = MAXLEN,
        ttl_s: int = TTL_S,
        block_s: float = BLOCK_S,
        count: int = COUNT,
        keys_per_reader: int = KEYS_PER_READER,
    ) -> None:
        if maxlen < 1 or ttl_s < 1 or count < 1 or keys_per_reader < 1 or block_s <= 0:
            raise ValueError("stream bus settings must be positive")
        self._redis = redis
        self._url = url
        self.prefix = prefix
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.block_s = block_s
        self.count = min(count, maxlen)
        self._keys_per_reader = keys_per_reader
        self._topics: dict[str, _Topic] = {}
        self._readers: list[_Reader] = []

    @property
    def reader_count(self) -> int:
        """Reader tasks (and connections) started so far."""
        return len(self._readers)

    async def add_entry(self, key: str, fields: dict[str, str], maxlen: int) -> str:
        """XADD with an approximate trim (exact for tiny streams) and a
        fresh expiry, in one round trip; the new entry's id."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=maxlen, approximate=maxlen >= 100)  # type: ignore[arg-type]
            pipe.expire(key, self.ttl_s)
            added, _ = await pipe.execute()
        return str(added)

    async def publish(self, topic: str, message: Message) -> None:
        """Appends `message` to the topic's stream."""
        async with asyncio.timeout(TIMEOUT_S):
            await self.add_entry(
                self.prefix + topic, {"m": json.dumps(message, separators=(",", ":"))}, self.maxlen
            )

    async def newest_id(self, conn: aioredis.Redis, key: str) -> str:
        """The id of the stream's newest entry ("0-0" if it has none): a
        subscription starting there sees only later entries."""
        newest = await conn.xrevrange(key, "+", "-", count=1)
        return str(newest[0][0]) if newest else "0-0"

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the block."""
        subscription = Subscription()
        state = self._topics.get(topic)
        added = False
        if state is None:
            start: str | None
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    start = await self.newest_id(self._redis, self.prefix + topic)
            except (RedisError, OSError) as err:
                _log.warning("could not read a stream's start; will retry", error=str(err))
                start = None
            state = self._topics.get(topic)  # another subscriber may have won
            if state is None:
                state = _Topic(self.prefix + topic, start, self._reader_with_room())
                self._topics[topic] = state
                state.reader.add(topic, state)
                added = True
        state.subscribers.add(subscription)
        if state.last is None or state.reader.failing:
            subscription.lag()
        try:
            if added:
                await state.reader.wake()
            yield subscription
        finally:
            state.subscribers.discard(subscription)
            if not state.subscribers and self._topics.get(topic) is state:
                del self._topics[topic]
                del state.reader.topics[topic]

    def _reader_with_room(self) -> _Reader:
        for reader in self._readers:
            if len(reader.topics) < self._keys_per_reader:
                return reader
        reader = _Reader(self, self._url)
        self._readers.append(reader)
        return reader

    async def close(self) -> None:
        """Stops the readers and closes their connections."""
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        self._topics.clear()
