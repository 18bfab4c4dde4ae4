"""Rate limiting and usage counts, each behind one interface, in-process
or in Redis.

`build_rate_limiter(settings.redis_url)` picks the rate limiter; callers
use `acquire_all(limiter, [f"tenant:{t}", f"key:{k}"], rps, burst)` and turn
a denied `Decision` into `ResourceExhausted` with `denial_error`.
`build_token_usage(settings.redis_url, seed)` picks the daily token counts
behind the token quota (`usage.py`).
"""

from __future__ import annotations

import math

from aster.server.errors import ResourceExhausted
from aster.server.limits.base import Decision, Limit, RateLimiter, acquire_all
from aster.server.limits.in_process import InProcessRateLimiter
from aster.server.limits.redis_limiter import RedisRateLimiter
from aster.server.limits.redis_usage import RedisTokenUsage
from aster.server.limits.usage import InProcessTokenUsage, Seed, TokenUsage

__all__ = [
    "Decision",
    "InProcessRateLimiter",
    "InProcessTokenUsage",
    "Limit",
    "RateLimiter",
    "RedisRateLimiter",
    "RedisTokenUsage",
    "TokenUsage",
    "acquire_all",
    "build_rate_limiter",
    "build_token_usage",
    "denial_error",
]


def build_rate_limiter(redis_url: str) -> RateLimiter:
    """The Redis limiter (one limit across replicas) when `redis_url` is set,
    else the in-process one (a limit per process)."""
    if redis_url:
        return RedisRateLimiter(redis_url)
    return InProcessRateLimiter()


def build_token_usage(redis_url: str, seed: Seed) -> TokenUsage:
    """Counts in Redis (one per tenant for every replica) when `redis_url`
    is set, else in this process; both seeded from the database by `seed`."""
    if redis_url:
        return RedisTokenUsage(redis_url, seed)
    return InProcessTokenUsage(seed)


def denial_error(decision: Decision) -> ResourceExhausted:
    """The error for a denied decision, with `retry_after_s` (rounded up to
    the millisecond) and, in the metadata, the kind of the deciding bucket:
    its key up to the first ':' (`tenant` for `tenant:acme`), so ids in
    keys are not echoed."""
    retry_after_s = math.ceil(decision.retry_after_s * 1000) / 1000
    metadata = {"retry_after": f"{retry_after_s:g}"}
    if decision.limited_by is not None:
        metadata["limit"] = decision.limited_by.split(":", 1)[0]
    return ResourceExhausted(
        "rate limit exceeded; retry later", retry_after_s=retry_after_s, **metadata
    )
