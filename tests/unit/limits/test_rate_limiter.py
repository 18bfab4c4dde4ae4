"""Token-bucket rate limiting, the same tests against the in-process and the
Redis limiter: bursts, refill, costs, several buckets at once, replicas
sharing one Redis, and failing open when Redis is down."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis
from structlog.testing import capture_logs

from aster.server.errors import ResourceExhausted
from aster.server.limits import (
    Decision,
    InProcessRateLimiter,
    Limit,
    RateLimiter,
    RedisRateLimiter,
    acquire_all,
    build_rate_limiter,
    denial_error,
)
from aster.server.limits.base import decide
from tests.unit.limits.conftest import TIMEOUT_S, delete_prefix

# Slow enough that milliseconds of test overhead (on a busy machine, tens
# of them) refill well under one token, fast enough to watch refill in a
# few hundred milliseconds.
RATE = 5.0
# So slow that nothing refills during a test.
FROZEN = 0.001


async def drain(limiter: RateLimiter, key: str, rate: float, burst: int) -> list[Decision]:
    """`burst + 1` acquires in a row."""
    return [await limiter.acquire(key, rate, burst) for _ in range(burst + 1)]


async def test_burst_is_allowed_then_denied(limiter: RateLimiter) -> None:
    decisions = await drain(limiter, "k", RATE, 5)

    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [round(d.remaining) for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert all(d.retry_after_s == 0 and not d.degraded for d in decisions[:5])
    denied = decisions[-1]
    # About one token's refill time, 1 / RATE, minus what trickled in meanwhile.
    assert 0.5 / RATE < denied.retry_after_s <= 1 / RATE + 1e-9
    assert denied.remaining < 1
    assert denied.limited_by == "k"


async def test_tokens_refill_at_the_rate(limiter: RateLimiter) -> None:
    denied = (await drain(limiter, "k", RATE, 3))[-1]
    assert not denied.allowed

    await asyncio.sleep(denied.retry_after_s + 0.01)
    assert (await limiter.acquire("k", RATE, 3)).allowed
    assert not (await limiter.acquire("k", RATE, 3)).allowed


async def test_refill_stops_at_the_burst(limiter: RateLimiter) -> None:
    await drain(limiter, "k", RATE, 3)
    await asyncio.sleep(4 / RATE)  # 4 tokens' worth, capped at 3

    decisions = await drain(limiter, "k", RATE, 3)
    assert [d.allowed for d in decisions] == [True, True, True, False]


async def test_cost_above_one(limiter: RateLimiter) -> None:
    first = await limiter.acquire("k", RATE, 10, cost=4)
    second = await limiter.acquire("k", RATE, 10, cost=4)
    third = await limiter.acquire("k", RATE, 10, cost=4)

    assert first.allowed and second.allowed and not third.allowed
    assert second.remaining == pytest.approx(2, abs=0.5)
    assert third.retry_after_s == pytest.approx((4 - 2) / RATE, abs=0.1)
    # The denial took nothing: the two tokens left still pay for a cost of 2.
    assert (await limiter.acquire("k", RATE, 10, cost=2)).allowed


@pytest.mark.parametrize(
    ("limits", "cost", "message"),
    [
        ([], 1.0, "at least one key"),
        ([Limit("k", 0, 5)], 1.0, "rate"),
        ([Limit("k", math.inf, 5)], 1.0, "rate"),
        ([Limit("k", 1, 0)], 1.0, "burst"),
        ([Limit("k", 1, 5)], 0.0, "cost"),
        ([Limit("k", 1, 5)], 6.0, "exceeds the burst"),
        ([Limit("k", 1, 5), Limit("k", 2, 5)], 1.0, "different limits"),
    ],
)
async def test_invalid_calls_are_rejected(
    limiter: RateLimiter, limits: list[Limit], cost: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await limiter.acquire_many(limits, cost)


async def test_the_same_key_twice_is_charged_once(limiter: RateLimiter) -> None:
    decision = await acquire_all(limiter, ["k", "k"], FROZEN, 2)

    assert decision.allowed
    assert decision.remaining == pytest.approx(1, abs=0.01)


async def test_several_keys_the_most_restrictive_wins(limiter: RateLimiter) -> None:
    keys = ["tenant:t", "key:a"]
    for _ in range(2):
        assert (await limiter.acquire("key:a", FROZEN, 5)).allowed

    decision = await acquire_all(limiter, keys, FROZEN, 5)
    assert decision.allowed
    assert decision.limited_by == "key:a"
    assert decision.remaining == pytest.approx(2, abs=0.01)

    decisions = [await acquire_all(limiter, keys, FROZEN, 5) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[-1].limited_by == "key:a"


async def test_a_denial_drains_no_other_bucket(limiter: RateLimiter) -> None:
    for _ in range(3):
        assert (await acquire_all(limiter, ["tenant:t", "key:a"], FROZEN, 3)).allowed

    denied = await acquire_all(limiter, ["tenant:t", "key:b"], FROZEN, 3)
    assert not denied.allowed
    assert denied.limited_by == "tenant:t"

    # key:b was not charged for the denied call: its whole burst is there.
    alone = [await limiter.acquire("key:b", FROZEN, 3) for _ in range(4)]
    assert [d.allowed for d in alone] == [True, True, True, False]


async def test_retry_after_is_the_longest_wait(limiter: RateLimiter) -> None:
    limits = [Limit("tenant:t", 10.0, 1), Limit("key:a", 2.0, 1)]
    assert (await limiter.acquire_many(limits)).allowed

    denied = await limiter.acquire_many(limits)
    assert not denied.allowed
    assert denied.limited_by == "key:a"
    assert denied.retry_after_s == pytest.approx(1 / 2.0, abs=0.1)


async def test_buckets_are_independent(limiter: RateLimiter) -> None:
    await drain(limiter, "a", FROZEN, 2)

    assert (await limiter.acquire("b", FROZEN, 2)).allowed


async def test_concurrent_acquires_never_exceed_the_burst(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(*(limiter.acquire("k", FROZEN, 100) for _ in range(1000)))

    assert not any(d.degraded for d in decisions)
    assert sum(d.allowed for d in decisions) == 100


@pytest.mark.redis
async def test_two_replicas_enforce_one_combined_limit(redis_url: str, rl_prefix: str) -> None:
    replicas = [
        RedisRateLimiter(redis_url, prefix=rl_prefix, timeout_s=TIMEOUT_S) for _ in range(2)
    ]
    try:
        decisions = await asyncio.gather(
            *(replicas[i % 2].acquire_many([Limit("tenant:t", FROZEN, 50)]) for i in range(400))
        )
        assert sum(d.allowed for d in decisions) == 50
        assert not any(d.degraded for d in decisions)
        # And again with two buckets per call: the tenant's 30 are shared.
        calls = [
            acquire_all(replicas[i % 2], ["tenant:u", f"key:{i % 4}"], FROZEN, 30)
            for i in range(200)
        ]
        decisions = await asyncio.gather(*calls)
        assert not any(d.degraded for d in decisions)
        assert sum(d.allowed for d in decisions) == 30
    finally:
        for replica in replicas:
            await replica.close()
        delete_prefix(redis_url, rl_prefix)


@pytest.mark.redis
async def test_redis_buckets_expire_once_refilled(redis_url: str, rl_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, prefix=rl_prefix, timeout_s=TIMEOUT_S)
    client = redis.Redis.from_url(redis_url)
    try:
        await limiter.acquire("k", RATE, 5)
        ttl_ms = client.pttl(rl_prefix + "k")
        assert 0 < ttl_ms <= 2000 * 5 / RATE + 1000
        assert set(client.hkeys(rl_prefix + "k")) == {b"t", b"ts"}
        # A denied call writes nothing.
        assert (await limiter.acquire("d", FROZEN, 1)).allowed
        before = client.hgetall(rl_prefix + "d")
        assert not (await limiter.acquire("d", FROZEN, 1)).allowed
        assert client.hgetall(rl_prefix + "d") == before
    finally:
        client.close()
        await limiter.close()
        delete_prefix(redis_url, rl_prefix)


@pytest.mark.redis
async def test_redis_sends_the_script_when_it_is_not_cached(redis_url: str, rl_prefix: str) -> None:
    limiter = RedisRateLimiter(redis_url, prefix=rl_prefix, timeout_s=TIMEOUT_S)
    # A SHA Redis has never seen answers NOSCRIPT, as after a restart.
    limiter._sha = "0" * 40
    try:
        decisions = await drain(limiter, "k", FROZEN, 2)
        assert [(d.allowed, d.degraded) for d in decisions] == [
            (True, False),
            (True, False),
            (False, False),
        ]
    finally:
        await limiter.close()
        delete_prefix(redis_url, rl_prefix)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_redis_fails_open_and_warns_once() -> None:
    with capture_logs() as logs:
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{_closed_port()}/0")
        try:
            started = time.monotonic()
            decisions = [await limiter.acquire("k", FROZEN, 1) for _ in range(5)]
            elapsed = time.monotonic() - started
        finally:
            await limiter.close()

    assert all(d.allowed and d.degraded for d in decisions)
    assert elapsed < 1.0
    warnings = [log for log in logs if log["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "fail open" in warnings[0]["event"]


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_hanging_redis_fails_open_within_the_timeout(silent_server: int) -> None:
    limiter = RedisRateLimiter(
        f"redis://127.0.0.1:{silent_server}/0", timeout_s=0.1, warn_interval_s=0
    )
    try:
        started = time.monotonic()
        first = await limiter.acquire("k", FROZEN, 1)
        first_elapsed = time.monotonic() - started
        # In the cooldown after the failure Redis is not even asked.
        started = time.monotonic()
        second = await limiter.acquire("k", FROZEN, 1)
        second_elapsed = time.monotonic() - started
    finally:
        await limiter.close()

    assert first.allowed and first.degraded and first_elapsed < 0.5
    assert second.allowed and second.degraded and second_elapsed < 0.05


async def test_queueing_for_a_connection_is_bounded(silent_server: int) -> None:
    limiter = RedisRateLimiter(
        f"redis://127.0.0.1:{silent_server}/0",
        timeout_s=0.3,
        queue_timeout_s=0.05,
        max_connections=1,
    )
    try:
        started = time.monotonic()
        stuck = asyncio.create_task(limiter.acquire("k", FROZEN, 1))
        await asyncio.sleep(0)
        queued = await limiter.acquire("k", FROZEN, 1)
        queued_elapsed = time.monotonic() - started
        await stuck
    finally:
        await limiter.close()

    assert queued.allowed and queued.degraded
    assert queued_elapsed < 0.25  # gave up queueing, not waiting for the stuck call


async def test_in_process_memory_is_bounded() -> None:
    now = [0.0]
    limiter = InProcessRateLimiter(max_buckets=100, sweep_interval_s=3600, clock=lambda: now[0])

    # Buckets in use at once beyond the bound: the least recently used go.
    for i in range(1000):
        await limiter.acquire(f"k:{i}", FROZEN, 3)
        assert limiter.bucket_count <= 100
    assert (await limiter.acquire("k:999", FROZEN, 3)).remaining == pytest.approx(1, abs=0.01)


async def test_in_process_sweep_drops_only_full_buckets() -> None:
    now = [0.0]
    limiter = InProcessRateLimiter(max_buckets=10, sweep_interval_s=3600, clock=lambda: now[0])
    for _ in range(3):
        await limiter.acquire("busy", 0.1, 3)  # refills over 30 s
    for i in range(9):
        await limiter.acquire(f"idle:{i}", 10.0, 3)  # refills in 0.1 s
    now[0] = 1.0
    await limiter.acquire("new", 10.0, 3)  # 11 buckets > 10: sweep

    assert limiter.bucket_count == 2  # "busy" and "new" are not full
    assert not (await limiter.acquire("busy", 0.1, 3, cost=1)).allowed


async def test_in_process_periodic_sweep() -> None:
    now = [0.0]
    limiter = InProcessRateLimiter(max_buckets=1000, sweep_interval_s=10, clock=lambda: now[0])
    for i in range(50):
        await limiter.acquire(f"k:{i}", 1.0, 3)
    now[0] = 11.0
    await limiter.acquire("trigger", 1.0, 3)

    assert limiter.bucket_count == 1


async def test_factory_picks_the_implementation() -> None:
    in_process = build_rate_limiter("")
    distributed = build_rate_limiter(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        assert isinstance(in_process, InProcessRateLimiter)
        assert isinstance(distributed, RedisRateLimiter)
    finally:
        await in_process.close()
        await distributed.close()


def test_denial_error_carries_retry_after() -> None:
    decision = Decision(False, 0.04321, 0.1, "tenant:acme")

    error = denial_error(decision)

    assert isinstance(error, ResourceExhausted)
    assert error.code == "RESOURCE_EXHAUSTED"
    assert error.retry_after_s == pytest.approx(0.044)
    assert error.metadata == {"retry_after": "0.044", "limit": "tenant"}


def test_decide_reports_the_emptiest_bucket_when_allowed() -> None:
    limits = [Limit("a", 1.0, 10), Limit("b", 1.0, 10)]

    allowed = decide(limits, [7.0, 3.0], 1.0)
    denied = decide(limits, [7.0, 0.5], 1.0)

    assert allowed == Decision(True, 0.0, 2.0, "b")
    assert denied == Decision(False, 0.5, 0.5, "b")
