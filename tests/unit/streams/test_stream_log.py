"""Durable streams on SQLite and PostgreSQL, over the in-process and the
Redis bus: seq without gaps across writers, replay-then-follow with no gap
or duplicate, and the ways a follow ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aster.server.bus.base import EventBus, Message
from aster.server.bus.in_process import InProcessBus
from aster.server.bus.redis_bus import RedisBus
from aster.server.storage.database import Database
from aster.server.storage.stream_repository import StreamRepository
from aster.server.streams.log import StreamLog
from aster.server.streams.models import StreamEvent

TENANT = "t1"
STREAM = "room:r1"


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """Each bus implementation."""
    bus: EventBus
    if request.param == "redis":
        bus = RedisBus(request.getfixturevalue("redis_url"))
    else:
        bus = InProcessBus()
    yield bus
    await bus.close()


@pytest.fixture
def log(database: Database, bus: EventBus) -> StreamLog:
    """A stream log with a short idle re-check, so dropped events show fast."""
    return StreamLog(StreamRepository(database), bus, idle_check_s=0.2)


async def _collect(
    stream: AsyncIterator[StreamEvent], count: int, timeout_s: float = 10.0
) -> list[StreamEvent]:
    events: list[StreamEvent] = []

    async def take() -> None:
        async for event in stream:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(take(), timeout_s)
    return events


async def test_appends_get_consecutive_seqs_and_read_back(log: StreamLog) -> None:
    first = await log.append(TENANT, STREAM, "message", {"text": "hi"})
    more = await log.append_many(TENANT, STREAM, [("join", {"who": "a"}), ("leave", {"who": "a"})])
    assert [first.seq, *(e.seq for e in more)] == [1, 2, 3]
    stored = await log.read(TENANT, STREAM, 1, 10)
    assert [(e.seq, e.kind, e.data) for e in stored] == [
        (2, "join", {"who": "a"}),
        (3, "leave", {"who": "a"}),
    ]
    assert await log.last_seq(TENANT, STREAM) == 3
    assert stored[0].create_time is not None


async def test_streams_of_other_tenants_and_names_are_separate(log: StreamLog) -> None:
    await log.append(TENANT, STREAM, "message", {})
    other = await log.append("t2", STREAM, "message", {})
    elsewhere = await log.append(TENANT, "room:r2", "message", {})
    assert (other.seq, elsewhere.seq) == (1, 1)
    assert await log.read("t2", "room:r1", 0, 10) == [other]
    assert await log.last_seq("t3", STREAM) == 0


async def test_concurrent_writers_on_two_replicas_leave_no_gap(
    log: StreamLog,
    database: Database,
    bus: EventBus,
) -> None:
    # A second Database is a second connection pool: another replica.
    replica_db = Database(str(database.engine.url.render_as_string(hide_password=False)))
    replica = StreamLog(StreamRepository(replica_db), bus)
    try:
        writes = [
            (log if i % 2 else replica).append(TENANT, STREAM, "message", {"i": i})
            for i in range(40)
        ]
        stored = await asyncio.gather(*writes)
    finally:
        await replica_db.close()
    assert sorted(e.seq for e in stored) == list(range(1, 41))
    assert [e.seq for e in await log.read(TENANT, STREAM, 0, 100)] == list(range(1, 41))


async def test_follow_replays_then_follows_live_until_a_terminal_kind(log: StreamLog) -> None:
    await log.append_many(TENANT, STREAM, [("step", {"n": 1}), ("step", {"n": 2})])
    follower = log.follow(TENANT, STREAM, 1, terminal_kinds={"done"})

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        await log.append(TENANT, STREAM, "step", {"n": 3})
        await log.append(TENANT, STREAM, "done", {})
        await log.append(TENANT, STREAM, "after", {})

    writer = asyncio.create_task(write_later())
    events = [e async for e in follower]
    await writer
    assert [(e.seq, e.kind) for e in events] == [(2, "step"), (3, "step"), (4, "done")]


async def test_follow_ends_when_finished_and_nothing_more_is_stored(log: StreamLog) -> None:
    await log.append(TENANT, STREAM, "step", {})
    ended = False

    async def finished() -> bool:
        return ended

    follower = log.follow(TENANT, STREAM, 0, finished=finished)
    first = await _collect(follower, 1)
    ended = True
    rest = [e async for e in follower]
    assert [e.seq for e in first] == [1]
    assert rest == []


class _DroppingBus(InProcessBus):
    """Loses every other published message, as a bus outage would."""

    def __init__(self) -> None:
        super().__init__()
        self.published = 0

    async def publish(self, topic: str, message: Message) -> None:
        self.published += 1
        if self.published % 2:
            return
        await super().publish(topic, message)


async def test_events_the_bus_dropped_are_read_from_the_store(
    database: Database,
) -> None:
    log = StreamLog(StreamRepository(database), _DroppingBus(), idle_check_s=0.2)
    follower = log.follow(TENANT, STREAM, 0, terminal_kinds={"done"})
    collected = asyncio.create_task(_collect(follower, 6))
    await asyncio.sleep(0.1)
    for i in range(5):
        await log.append(TENANT, STREAM, "step", {"i": i})
    await log.append(TENANT, STREAM, "done", {})
    events = await collected
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.data.get("i") for e in events[:5]] == [0, 1, 2, 3, 4]


async def test_two_followers_from_different_cursors_see_the_same_tail(log: StreamLog) -> None:
    await log.append_many(TENANT, STREAM, [("step", {}) for _ in range(3)])
    early = log.follow(TENANT, STREAM, 0, terminal_kinds={"done"})
    late = log.follow(TENANT, STREAM, 2, terminal_kinds={"done"})
    tasks = [asyncio.create_task(_collect(f, n)) for f, n in ((early, 5), (late, 3))]
    await asyncio.sleep(0.1)
    await log.append(TENANT, STREAM, "step", {})
    await log.append(TENANT, STREAM, "done", {})
    results: list[Any] = await asyncio.gather(*tasks)
    assert [e.seq for e in results[0]] == [1, 2, 3, 4, 5]
    assert [e.seq for e in results[1]] == [3, 4, 5]


async def test_joining_a_finished_stream_at_its_end_returns_at_once(
    database: Database,
) -> None:
    log = StreamLog(StreamRepository(database), InProcessBus(), idle_check_s=30)
    await log.append_many(TENANT, STREAM, [("step", {}), ("step", {})])

    async def finished() -> bool:
        return True

    started = asyncio.get_running_loop().time()
    rest = [e async for e in log.follow(TENANT, STREAM, 1, finished=finished)]
    assert [e.seq for e in rest] == [2]
    assert [e async for e in log.follow(TENANT, STREAM, 2, finished=finished)] == []
    assert asyncio.get_running_loop().time() - started < 5
