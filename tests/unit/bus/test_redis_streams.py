"""What only the Redis bus does: one stream per topic, trimmed and
expiring; one reader multiplexing many topics; LAGGED when Redis trimmed
what a reader had not read; and reconnecting after Redis restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis import asyncio as aioredis

from aster.server.bus.base import LAGGED
from aster.server.bus.redis_bus import RedisBus
from aster.server.bus.redis_streams import RedisStreams, entry_id
from aster.server.runs.executor import CONTROL_TOPIC
from tests.e2e.test_health_metrics import start_redis
from tests.processes import free_port
from tests.unit.bus.conftest import TTL_S
from tests.unit.bus.test_bus import WAIT_S, take
from tests.unit.limits.conftest import delete_prefix

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client, to look at what the bus left in Redis."""
    connection = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    yield connection
    connection.close()


@pytest.fixture
async def redis_bus(redis_url: str, stream_prefix: str) -> AsyncIterator[RedisBus]:
    bus = RedisBus(redis_url, stream_prefix=stream_prefix, stream_ttl_s=TTL_S, stream_maxlen=200)
    yield bus
    await bus.close()
    delete_prefix(redis_url, stream_prefix)


def test_entry_ids_compare_numerically() -> None:
    assert entry_id("9-0") < entry_id("10-0") < entry_id("10-1")
    assert entry_id("0-0") == (0, 0)


async def test_one_stream_per_topic_trimmed_and_expiring(
    redis_bus: RedisBus, client: redis.Redis, stream_prefix: str
) -> None:
    for n in range(1000):
        await redis_bus.publish("run:big", {"n": n})
    await redis_bus.publish("room:small", {"n": 0})
    key = stream_prefix + "run:big"
    # Approximate trimming keeps at least MAXLEN, dropping whole nodes
    # (100 entries each by default).
    assert 200 <= client.xlen(key) <= 300
    newest = client.xrevrange(key, count=1)
    assert newest and newest[0][1] == {"m": '{"n":999}'}
    assert 0 < client.ttl(key) <= TTL_S
    assert client.xlen(stream_prefix + "room:small") == 1
    # Cancels do not leave a stream behind: they are pub/sub broadcasts.
    await redis_bus.publish(CONTROL_TOPIC, {"cancel": "run_1"})
    assert not client.exists(stream_prefix + CONTROL_TOPIC)


async def test_many_topics_share_one_reader(redis_bus: RedisBus) -> None:
    async with contextlib.AsyncExitStack() as stack:
        subscriptions = [
            await stack.enter_async_context(redis_bus.subscribe(f"run:{n}")) for n in range(250)
        ]
        # KEYS_PER_READER (100) topics per reader connection.
        assert redis_bus.streams.reader_count == 3
        started = time.monotonic()
        await redis_bus.publish("run:249", {"n": 249})
        await redis_bus.publish("run:3", {"n": 3})
        assert await take(subscriptions[249], 1) == [{"n": 249}]
        assert await take(subscriptions[3], 1) == [{"n": 3}]
        assert time.monotonic() - started < 2
        assert await subscriptions[4].get(wait_s=0.05) is None


async def test_a_new_topic_does_not_wait_for_the_block_timeout(
    redis_url: str, stream_prefix: str
) -> None:
    connection = aioredis.Redis.from_url(redis_url, decode_responses=True)
    streams = RedisStreams(connection, redis_url, prefix=stream_prefix, ttl_s=TTL_S, block_s=60)
    try:
        async with streams.subscribe("run:first"):
            await asyncio.sleep(0.3)  # the reader now blocks for up to 60 s
            async with streams.subscribe("run:second") as second:
                await streams.publish("run:second", {"n": 1})
                assert await second.get(wait_s=3) == {"n": 1}
    finally:
        await streams.close()
        await connection.aclose()
        delete_prefix(redis_url, stream_prefix)


async def test_a_reader_behind_redis_trimming_is_told_it_lagged(
    redis_bus: RedisBus, client: redis.Redis, stream_prefix: str
) -> None:
    key = stream_prefix + "run:fast"
    async with redis_bus.subscribe("run:fast") as live:
        await asyncio.sleep(0.2)  # the reader blocks on the stream
        # Add 2,000 entries while the event loop (and so the reader) cannot
        # run: Redis trims to about 200 before the reader reads again.
        pipe = client.pipeline(transaction=False)
        for n in range(2000):
            pipe.xadd(key, {"m": f'{{"n":{n}}}'}, maxlen=200, approximate=True)
        pipe.execute()
        items = []
        while (item := await live.get(wait_s=1)) is not None:
            items.append(item)
        # The reader got entry 0, then found the stream trimmed past it.
        assert items == [{"n": 0}, LAGGED]
        # Once the subscriber took LAGGED (and re-read its store), new
        # messages flow again.
        await redis_bus.publish("run:fast", {"n": 2000})
        assert await take(live, 1) == [{"n": 2000}]


class OwnRedis:
    """A redis-server of this test's own, stopped and started at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process = start_redis(self.port, directory)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)

    def start(self) -> None:
        self._process = start_redis(self.port, self._directory)


async def wait_ping(bus: RedisBus, wanted: bool) -> None:
    async with asyncio.timeout(10):
        while await bus.ping() != wanted:  # noqa: ASYNC110 - polls Redis
            await asyncio.sleep(0.05)


async def test_the_bus_reconnects_after_redis_restarts(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path)
    bus = RedisBus(server.url)
    try:
        await wait_ping(bus, True)
        async with bus.subscribe("run:r") as live, bus.subscribe(CONTROL_TOPIC) as control:
            await bus.publish("run:r", {"n": 1})
            assert await take(live, 1) == [{"n": 1}]
            server.stop()
            await wait_ping(bus, False)
            # Subscribers learn at once that messages may be lost, and fill
            # from the store; publishing fails (the event log logs it).
            assert await live.get(wait_s=WAIT_S) is LAGGED
            with pytest.raises(Exception):  # noqa: B017 - whatever redis-py raises
                await bus.publish("run:r", {"n": 2})
            # A subscription opened during the outage lags at once too.
            async with bus.subscribe("run:during") as during:
                assert await during.get(wait_s=WAIT_S) is LAGGED
                server.start()
                await wait_ping(bus, True)
                back = time.monotonic()
                # Once back, subscribers are told again (what was published
                # meanwhile is in the store only), then messages flow.
                assert await live.get(wait_s=WAIT_S) is LAGGED
                await _publish_until_received(bus, "run:r", live)
                await _publish_until_received(bus, "run:during", during)
                await _publish_until_received(bus, CONTROL_TOPIC, control)
                print(f"\nbus flowing again {time.monotonic() - back:.2f} s after Redis returned")
                assert time.monotonic() - back < 10
    finally:
        await bus.close()
        server.stop()


async def _publish_until_received(bus: RedisBus, topic: str, live: object) -> None:
    """Publishes until the subscription gets a message (readers reconnect
    with a backoff, so the first publishes may come before they are back)."""
    from aster.server.bus.base import Subscription

    assert isinstance(live, Subscription)
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(Exception):
                await bus.publish(topic, {"probe": True})
            item = await live.get(wait_s=0.5)
            if isinstance(item, dict) and item.get("probe"):
                return
