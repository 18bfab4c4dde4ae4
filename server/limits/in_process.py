"""The embedded rate limiter: token buckets in a dict, for one process."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from aster.server.limits.base import Decision, Limit, decide, validate

# Buckets kept at most; beyond it full buckets are dropped first, then the
# least recently charged ones.
MAX_BUCKETS = 100_000
# How often idle full buckets are swept away even below MAX_BUCKETS.
SWEEP_INTERVAL_S = 60.0


class _Bucket:
    """Tokens at `stamp`, and the settings needed to tell when it is full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float, rate: float, burst: int) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.rate = rate
        self.burst = burst

    def level(self, now: float, rate: float, burst: int) -> float:
        """Tokens at `now` under the given settings."""
        return min(float(burst), self.tokens + max(0.0, now - self.stamp) * rate)

    def is_full(self, now: float) -> bool:
        """True when the bucket has refilled to its burst (and so is the
        same as an absent one)."""
        return self.level(now, self.rate, self.burst) >= self.burst


class InProcessRateLimiter:
    """Token buckets of this process, on the monotonic clock.

    Each call's check and charge run without an await, so the event loop
    makes them atomic: no lock is needed. Buckets that are full are the same
    as absent ones and are never stored for long: a sweep drops them every
    `sweep_interval_s`, or when more than `max_buckets` are held. If more
    than `max_buckets` buckets are genuinely in use, the least recently
    charged ones are dropped (forgiving those callers) so memory stays
    bounded. Not thread-safe: use it from one event loop.
    """

    name = "in_process"

    def __init__(
        self,
        *,
        max_buckets: int = MAX_BUCKETS,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_buckets = max_buckets
        self._sweep_interval_s = sweep_interval_s
        self._clock = clock
        self._last_sweep = clock()

    @property
    def bucket_count(self) -> int:
        """How many buckets are held (those not full, give or take a sweep)."""
        return len(self._buckets)

    async def acquire(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """Takes `cost` tokens from bucket `key` if it holds them."""
        return self.try_acquire([Limit(key, rate, burst)], cost)

    async def acquire_many(self, limits: Sequence[Limit], cost: float = 1.0) -> Decision:
        """Takes `cost` from every bucket of `limits` if all hold it, else
        from none."""
        return self.try_acquire(limits, cost)

    def try_acquire(self, limits: Sequence[Limit], cost: float = 1.0) -> Decision:
        """The synchronous core of `acquire_many`: check and charge in one
        step, with no await in between."""
        unique = validate(limits, cost)
        now = self._clock()
        buckets = [self._buckets.get(limit.key) for limit in unique]
        levels = [
            float(limit.burst) if bucket is None else bucket.level(now, limit.rate, limit.burst)
            for limit, bucket in zip(unique, buckets, strict=True)
        ]
        decision = decide(unique, levels, cost)
        if decision.allowed:
            for limit, bucket, tokens in zip(unique, buckets, levels, strict=True):
                if bucket is None:
                    self._buckets[limit.key] = _Bucket(tokens - cost, now, limit.rate, limit.burst)
                else:
                    bucket.tokens, bucket.stamp = tokens - cost, now
                    bucket.rate, bucket.burst = limit.rate, limit.burst
                    self._buckets.move_to_end(limit.key)
            if len(self._buckets) > self._max_buckets or (
                now - self._last_sweep >= self._sweep_interval_s
            ):
                self._sweep(now)
        return decision

    def _sweep(self, now: float) -> None:
        """Drops full buckets, then the least recently charged ones while
        more than `max_buckets` remain."""
        self._last_sweep = now
        for key in [key for key, bucket in self._buckets.items() if bucket.is_full(now)]:
            del self._buckets[key]
        if len(self._buckets) <= self._max_buckets:
            return
        # Leave headroom so a crowd of active keys does not sweep on every call.
        target = max(1, self._max_buckets - self._max_buckets // 10)
        while len(self._buckets) > target:
            self._buckets.popitem(last=False)

    async def close(self) -> None:
        """Forgets every bucket."""
        self._buckets.clear()
