"""Daily token counts behind the token quota, the same tests against the
in-process and the Redis implementation: seeded from the database on the
day's first read, charged as runs finish, per tenant and per UTC day; and
for Redis, shared by replicas, expiring, re-seeded when lost, and still
answering (from the database) while Redis is down."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from aster.server.limits import InProcessTokenUsage, RedisTokenUsage, TokenUsage, build_token_usage
from aster.server.limits.usage import day_of, day_start
from tests.e2e.test_health_metrics import start_redis
from tests.processes import free_port
from tests.unit.limits.conftest import delete_prefix

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


@dataclass
class Database:
    """What the runs table would answer: tokens per tenant since midnight."""

    tokens: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, datetime]] = field(default_factory=list)

    async def tokens_since(self, tenant: str, since: datetime) -> int:
        self.calls.append((tenant, since))
        return self.tokens.get(tenant, 0)


@dataclass
class Clock:
    now: datetime = NOON

    def __call__(self) -> datetime:
        return self.now


MakeUsage = Callable[[], TokenUsage]


@pytest.fixture
def quota_prefix() -> str:
    return f"aster:quota:tokens:test:{uuid.uuid4().hex}:"


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
async def make_usage(
    request: pytest.FixtureRequest, quota_prefix: str, database: Database, clock: Clock
) -> AsyncIterator[MakeUsage]:
    """Makes counters of one implementation over one database. Redis ones
    share a prefix, so two act like two replicas."""
    made: list[TokenUsage] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make() -> TokenUsage:
        usage: TokenUsage = (
            RedisTokenUsage(url, database.tokens_since, prefix=quota_prefix, clock=clock)
            if url
            else InProcessTokenUsage(database.tokens_since, clock=clock)
        )
        made.append(usage)
        return usage

    yield make
    for usage in made:
        await usage.close()
    if url:
        delete_prefix(url, quota_prefix)


@pytest.fixture
def usage(make_usage: MakeUsage) -> TokenUsage:
    return make_usage()


def test_days_are_utc() -> None:
    late = datetime(2026, 3, 14, 23, 30, tzinfo=UTC)
    assert day_of(late) == "20260314"
    assert day_of(late.astimezone(UTC) + timedelta(hours=1)) == "20260315"
    assert day_start(late) == datetime(2026, 3, 14, tzinfo=UTC)


async def test_the_first_read_of_a_day_counts_the_database(
    usage: TokenUsage, database: Database
) -> None:
    database.tokens["acme"] = 700
    assert await usage.today("acme") == 700
    assert database.calls == [("acme", datetime(2026, 3, 14, tzinfo=UTC))]
    # Later reads come from the counter, not the database.
    database.tokens["acme"] = 999
    assert await usage.today("acme") == 700
    assert len(database.calls) == 1


async def test_finished_runs_are_charged(usage: TokenUsage, database: Database) -> None:
    database.tokens["acme"] = 100
    await usage.today("acme")
    await usage.add("acme", 40)
    await usage.add("acme", 2)
    await usage.add("acme", 0)
    assert await usage.today("acme") == 142


async def test_a_charge_before_the_first_read_is_left_to_the_database(
    usage: TokenUsage, database: Database
) -> None:
    # The run's tokens are stored with it before it is charged, so the
    # database count has them: adding them again would count them twice.
    database.tokens["acme"] = 50
    await usage.add("acme", 50)
    assert await usage.today("acme") == 50


async def test_tenants_are_counted_apart(usage: TokenUsage, database: Database) -> None:
    database.tokens.update(acme=10, globex=20)
    assert await usage.today("acme") == 10
    assert await usage.today("globex") == 20
    await usage.add("globex", 5)
    assert await usage.today("acme") == 10
    assert await usage.today("globex") == 25


async def test_a_new_day_starts_from_the_database(
    usage: TokenUsage, database: Database, clock: Clock
) -> None:
    database.tokens["acme"] = 10
    await usage.today("acme")
    await usage.add("acme", 90)
    clock.now = NOON + timedelta(days=1)
    database.tokens["acme"] = 3
    assert await usage.today("acme") == 3
    assert database.calls[-1] == ("acme", datetime(2026, 3, 15, tzinfo=UTC))


def test_build_picks_the_implementation(redis_url: str) -> None:
    database = Database()
    assert build_token_usage("", database.tokens_since).name == "in_process"
    assert build_token_usage(redis_url, database.tokens_since).name == "redis"


@pytest.mark.redis
async def test_replicas_share_one_count(
    redis_url: str, quota_prefix: str, database: Database, clock: Clock
) -> None:
    one, two = (
        RedisTokenUsage(redis_url, database.tokens_since, prefix=quota_prefix, clock=clock)
        for _ in range(2)
    )
    try:
        database.tokens["acme"] = 5
        assert await one.today("acme") == 5
        await two.add("acme", 10)
        await one.add("acme", 1)
        assert await one.today("acme") == 16
        assert await two.today("acme") == 16
        assert len(database.calls) == 1
    finally:
        await one.close()
        await two.close()
        delete_prefix(redis_url, quota_prefix)


@pytest.mark.redis
async def test_redis_counts_expire_and_are_seeded_again_when_lost(
    redis_url: str, quota_prefix: str, database: Database, clock: Clock
) -> None:
    usage = RedisTokenUsage(redis_url, database.tokens_since, prefix=quota_prefix, clock=clock)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        database.tokens["acme"] = 5
        await usage.today("acme")
        await usage.add("acme", 10)
        key = f"{quota_prefix}20260314:acme"
        assert client.get(key) == "15"
        assert 86_400 < client.ttl(key) <= 2 * 86_400
        # Redis lost it (restarted without persistence): the next read
        # counts the database again rather than restarting from zero.
        client.delete(key)
        database.tokens["acme"] = 15
        await usage.add("acme", 7)  # not applied to a missing count
        assert client.get(key) is None
        assert await usage.today("acme") == 15
    finally:
        client.close()
        await usage.close()
        delete_prefix(redis_url, quota_prefix)


def wait_for_redis(port: int) -> None:
    """Returns once a redis-server just started answers PING."""
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")
    finally:
        client.close()


@pytest.mark.redis
async def test_while_redis_is_down_the_database_counts(tmp_path: Path, database: Database) -> None:
    port = free_port()
    server = start_redis(port, tmp_path)
    usage = RedisTokenUsage(f"redis://127.0.0.1:{port}/0", database.tokens_since)
    try:
        wait_for_redis(port)
        database.tokens["acme"] = 100
        assert await usage.today("acme") == 100
        await usage.add("acme", 1)
        assert await usage.today("acme") == 101
        server.terminate()
        server.wait(10)
        # Down: reads fall back to the database; charges wait.
        database.tokens["acme"] = 120
        assert await usage.today("acme") == 120
        await usage.add("acme", 19)
        assert _pending(usage)
        assert await usage.today("acme") == 120
        # Back (empty): pending charges apply only to counts that exist (the
        # database already has those tokens), and the count is seeded again.
        server = start_redis(port, tmp_path)
        wait_for_redis(port)
        assert await usage.today("acme") == 120
        assert not _pending(usage)
        await usage.add("acme", 5)
        assert await usage.today("acme") == 125
    finally:
        await usage.close()
        server.terminate()
        server.wait(10)


def _pending(usage: RedisTokenUsage) -> dict[str, int]:
    return usage._pending
