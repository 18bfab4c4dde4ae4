"""Daily token usage in Redis, one count for every replica.

Each count is an integer key `aster:quota:tokens:<day>:<tenant>` (day
`YYYYMMDD`, UTC) expiring two days after it was created. The first read of
a day seeds it from the database (`SET NX`, so concurrent first readers
agree); a charge is an INCRBY done only if the key exists (one script), so
that a count lost with Redis (restarted without persistence) is seeded
again from the database instead of restarting from the charge.

When Redis cannot be reached, a read falls back to the database count
(the quota still holds) and a charge is kept in this process and retried
with the next call that reaches Redis.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from aster.server.clock import utcnow
from aster.server.limits.usage import Clock, Seed, day_of, day_start

PREFIX = "aster:quota:tokens:"
# A day's count outlives its day by one day (clock skew, late readers).
TTL_S = 2 * 86_400
# Bounds each Redis call.
TIMEOUT_S = 1.0
# Charges kept while Redis is unreachable (per tenant and day); beyond it
# the oldest are dropped (those tokens are still in the database).
MAX_PENDING = 10_000
# A failure is logged at most once per this many seconds.
WARN_INTERVAL_S = 30.0

# KEYS[1]: the count. ARGV[1]: tokens. Adds only to an existing count.
CHARGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""


class RedisTokenUsage:
    """Tenants' daily token counts in Redis (see the module docstring)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        seed: Seed,
        *,
        prefix: str = PREFIX,
        ttl_s: int = TTL_S,
        timeout_s: float = TIMEOUT_S,
        clock: Clock = utcnow,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._charge = self._redis.register_script(CHARGE)
        self._seed = seed
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        # Charges not yet in Redis: key -> tokens.
        self._pending: dict[str, int] = {}
        self._last_warning = float("-inf")
        self._log = structlog.get_logger("aster.limits")

    def _key(self, tenant: str, day: str) -> str:
        return f"{self._prefix}{day}:{tenant}"

    async def add(self, tenant: str, tokens: int) -> None:
        """Charges today's count (if it exists); kept for later if Redis
        cannot be reached."""
        if tokens <= 0:
            return
        key = self._key(tenant, day_of(self._clock()))
        self._pending[key] = self._pending.get(key, 0) + tokens
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        await self._flush()

    async def today(self, tenant: str) -> int:
        """Today's count, seeded from the database on the day's first read;
        the database count when Redis cannot be reached."""
        now = self._clock()
        key = self._key(tenant, day_of(now))
        try:
            await self._flush(raise_errors=True)
            async with asyncio.timeout(self._timeout_s * 2):
                count = await self._redis.get(key)
            if count is not None:
                return int(count)
            seeded = await self._seed(tenant, day_start(now))
            async with asyncio.timeout(self._timeout_s * 2):
                await self._redis.set(key, seeded, nx=True, ex=self._ttl_s)
                count = await self._redis.get(key)
            return seeded if count is None else int(count)
        except (RedisError, OSError) as err:
            self._warn("reading a token quota from redis failed; counting in the database", err)
            return await self._seed(tenant, day_start(now))

    async def _flush(self, *, raise_errors: bool = False) -> None:
        """Applies the pending charges to the counts that exist."""
        while self._pending:
            # Taken out first, so that concurrent flushes never charge twice.
            key = next(iter(self._pending))
            tokens = self._pending.pop(key)
            try:
                async with asyncio.timeout(self._timeout_s * 2):
                    await self._charge(keys=[key], args=[tokens])
            except (RedisError, OSError) as err:
                self._pending[key] = self._pending.get(key, 0) + tokens
                if raise_errors:
                    raise
                self._warn("charging a token quota in redis failed; will retry", err)
                return

    def _warn(self, message: str, err: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            self._log.warning(message, error=f"{type(err).__name__}: {err}")

    async def close(self) -> None:
        """Closes the connections (charges still pending are dropped: the
        database has those tokens)."""
        await self._redis.aclose()
