"""The rate limiter interface: token buckets, one decision per call.

A bucket holds at most `burst` tokens and refills at `rate` tokens per
second; a call costing `cost` tokens is allowed when the bucket holds at
least `cost`. One call may check several buckets at once (a tenant's and an
API key's): it is allowed only if every bucket allows it, and then takes
`cost` from each; when any bucket denies, no bucket is charged. Both
implementations do this in one critical section (the in-process one without
awaits, the Redis one in a single Lua script), so concurrent callers never
over-admit and a denial never drains the other buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Slack for floating-point refill arithmetic: a caller who sleeps exactly
# `retry_after_s` must find its token there.
EPSILON = 1e-9


@dataclass(frozen=True)
class Limit:
    """One bucket to charge: its key, refill rate (tokens/s) and capacity."""

    key: str
    rate: float
    burst: int


@dataclass(frozen=True)
class Decision:
    """The outcome of one acquire.

    `retry_after_s` is 0 when allowed, else the seconds until every bucket
    of the call holds `cost` tokens again. `remaining` is the token count of
    the emptiest bucket after the call (charged only when allowed).
    `limited_by` is the key that decided: the one with the longest wait when
    denied, the emptiest one when allowed. `degraded` is True when the
    limiter could not reach its store and allowed the call unchecked
    (fail open).
    """

    allowed: bool
    retry_after_s: float
    remaining: float
    limited_by: str | None = None
    degraded: bool = False


class RateLimiter(Protocol):
    """Token buckets shared by every caller of one limiter (and, for the
    Redis implementation, by every replica using the same Redis)."""

    name: str

    async def acquire(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """Takes `cost` tokens from bucket `key` if it holds them."""
        ...

    async def acquire_many(self, limits: Sequence[Limit], cost: float = 1.0) -> Decision:
        """Takes `cost` tokens from every bucket of `limits` if all hold
        them, else from none, atomically. Raises ValueError for invalid
        limits or costs (see `validate`)."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


async def acquire_all(
    limiter: RateLimiter, keys: Sequence[str], rate: float, burst: int, cost: float = 1.0
) -> Decision:
    """Charges `cost` to the buckets `keys` (all with the same `rate` and
    `burst`), all or none, and reports the most restrictive bucket; e.g.
    `acquire_all(limiter, [f"tenant:{t}", f"key:{k}"], rps, burst)`."""
    return await limiter.acquire_many([Limit(key, rate, burst) for key in keys], cost)


def validate(limits: Sequence[Limit], cost: float) -> list[Limit]:
    """The limits of one call with exact duplicates removed, or ValueError:
    no limits, the same key with different settings, a rate that is not a
    positive finite number, a burst below 1, or a cost that is not positive
    or exceeds a burst (such a call could never be allowed)."""
    if not limits:
        raise ValueError("a rate limit check needs at least one key")
    if not (math.isfinite(cost) and cost > 0):
        raise ValueError(f"cost must be a positive number, got {cost!r}")
    unique: dict[str, Limit] = {}
    for limit in limits:
        if not (math.isfinite(limit.rate) and limit.rate > 0):
            raise ValueError(f"rate of {limit.key!r} must be a positive number, got {limit.rate!r}")
        if limit.burst < 1:
            raise ValueError(f"burst of {limit.key!r} must be at least 1, got {limit.burst!r}")
        if cost > limit.burst:
            raise ValueError(
                f"cost {cost!r} exceeds the burst {limit.burst} of {limit.key!r}; "
                "the call could never be allowed"
            )
        seen = unique.setdefault(limit.key, limit)
        if seen != limit:
            raise ValueError(f"key {limit.key!r} appears with different limits")
    return list(unique.values())


def decide(limits: Sequence[Limit], levels: Sequence[float], cost: float) -> Decision:
    """The decision for buckets holding `levels` tokens (already refilled to
    now). The Redis Lua script mirrors this function."""
    wait = 0.0
    waiting_key: str | None = None
    for limit, tokens in zip(limits, levels, strict=True):
        if tokens + EPSILON < cost:
            needed = (cost - tokens) / limit.rate
            if needed > wait:
                wait, waiting_key = needed, limit.key
    if waiting_key is not None:
        return Decision(False, wait, min(levels), waiting_key)
    emptiest = min(range(len(levels)), key=levels.__getitem__)
    return Decision(True, 0.0, max(0.0, levels[emptiest] - cost), limits[emptiest].key)


def fail_open(limits: Sequence[Limit]) -> Decision:
    """The decision when the store is unreachable: allowed, marked degraded."""
    return Decision(True, 0.0, float(min(limit.burst for limit in limits)), None, degraded=True)
