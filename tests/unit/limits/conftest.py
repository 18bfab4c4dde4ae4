"""Fixtures of the rate limiter tests: limiters of both implementations,
the Redis ones under a key prefix of their own that is deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from aster.server.limits import InProcessRateLimiter, RateLimiter, RedisRateLimiter

MakeLimiter = Callable[[], RateLimiter]
# Generous, so a busy test machine cannot make a limiter fail open: these
# tests are about the limits; the fail-open tests set their own timeouts.
TIMEOUT_S = 2.0


@pytest.fixture
def rl_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"aster:rl:test:{uuid.uuid4().hex}:"


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
async def make_limiter(
    request: pytest.FixtureRequest, rl_prefix: str
) -> AsyncIterator[MakeLimiter]:
    """Makes limiters of one implementation. Redis ones share one prefix, so
    two of them act like two replicas; in-process ones share nothing."""
    made: list[RateLimiter] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make() -> RateLimiter:
        limiter: RateLimiter = (
            RedisRateLimiter(url, prefix=rl_prefix, timeout_s=TIMEOUT_S)
            if url
            else InProcessRateLimiter()
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()
    if url:
        delete_prefix(url, rl_prefix)


@pytest.fixture
async def limiter(make_limiter: MakeLimiter) -> RateLimiter:
    """One limiter of each implementation."""
    return make_limiter()


def delete_prefix(url: str, prefix: str) -> None:
    """Deletes every Redis key under `prefix`."""
    client = redis.Redis.from_url(url, socket_timeout=3)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
