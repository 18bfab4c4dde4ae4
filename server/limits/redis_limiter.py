"""The distributed rate limiter: token buckets in Redis, shared by replicas.

Each bucket is a hash `aster:rl:<key>` with fields `t` (tokens) and `ts`
(Redis server time of the last charge, in seconds), expiring once it would
have refilled (2 x burst / rate): an absent bucket is a full one. One Lua
script checks and charges every bucket of a call, so the check is atomic
across replicas, and it reads the clock with `TIME` on the Redis server, so
replicas with skewed clocks agree. All keys of one call are touched by one
script run; on Redis Cluster they would need a common hash tag.

Fail open: when Redis is unreachable, slow or erroring, `acquire` allows the
call (a `Decision` with `degraded=True`) and logs a warning at most once per
`warn_interval_s`. A rate limiter outage must not take the API down. After a
failure Redis is not asked again for `cooldown_s`, so an outage costs at most
one bounded timeout (`timeout_s`) per cooldown rather than one per request.
Calls beyond `max_connections` in flight queue for a connection; one that
queues longer than `queue_timeout_s` (local overload, not an outage) is
allowed too, without starting a cooldown.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence

import structlog
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from aster.server.limits.base import EPSILON, Decision, Limit, fail_open, validate

PREFIX = "aster:rl:"
# Socket connect and read timeout of each Redis call (the whole call is
# bounded by twice this).
TIMEOUT_S = 0.5
# How long a call may queue for one of MAX_CONNECTIONS connections.
QUEUE_TIMEOUT_S = 5.0
# After a failure, requests are allowed without asking Redis for this long.
COOLDOWN_S = 1.0
# The fail-open warning is logged at most once per this many seconds.
WARN_INTERVAL_S = 30.0
# Connections to Redis; more concurrent callers queue (up to QUEUE_TIMEOUT_S).
MAX_CONNECTIONS = 64

# KEYS: the buckets. ARGV[1]: cost, ARGV[2]: epsilon, then rate and burst of
# each bucket. Returns {allowed (1/0), retry_after_s, remaining, index of the
# deciding key (1-based)}; floats travel as strings (Lua numbers returned to
# Redis are truncated to integers). Mirrors `aster.server.limits.base.decide`.
SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local cost = tonumber(ARGV[1])
local epsilon = tonumber(ARGV[2])
local levels = {}
local wait = 0
local waiting = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i + 1])
  local burst = tonumber(ARGV[2 * i + 2])
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(state[1])
  local stamp = tonumber(state[2])
  if tokens == nil or stamp == nil then
    tokens = burst
  else
    local elapsed = now - stamp
    if elapsed < 0 then elapsed = 0 end
    tokens = math.min(burst, tokens + elapsed * rate)
  end
  levels[i] = tokens
  if tokens + epsilon < cost then
    local needed = (cost - tokens) / rate
    if needed > wait then
      wait = needed
      waiting = i
    end
  end
end
local emptiest = 1
for i = 2, #levels do
  if levels[i] < levels[emptiest] then emptiest = i end
end
if waiting > 0 then
  return {0, string.format('%.17g', wait), string.format('%.17g', levels[emptiest]), waiting}
end
local stamp = string.format('%.17g', now)
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i + 1])
  local burst = tonumber(ARGV[2 * i + 2])
  redis.call('HSET', key, 't', string.format('%.17g', levels[i] - cost), 'ts', stamp)
  redis.call('PEXPIRE', key, math.ceil(2000 * burst / rate) + 1000)
end
local left = levels[emptiest] - cost
if left < 0 then left = 0 end
return {1, '0', string.format('%.17g', left), emptiest}
"""
# The SHA `SCRIPT LOAD` would return, computed here to save the round trip;
# the first EVALSHA answers NOSCRIPT and EVAL loads the script.
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


class RedisRateLimiter:
    """Token buckets in Redis, one combined limit for every replica.

    See the module docstring for the storage layout and the fail-open
    behaviour. `timeout_s` bounds connecting and each reply, and commands
    are not retried, so no call waits on Redis for more than 2 x `timeout_s`.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = PREFIX,
        timeout_s: float = TIMEOUT_S,
        queue_timeout_s: float = QUEUE_TIMEOUT_S,
        cooldown_s: float = COOLDOWN_S,
        warn_interval_s: float = WARN_INTERVAL_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._prefix = prefix
        self._sha = SCRIPT_SHA
        self._timeout_s = timeout_s
        self._queue_timeout_s = queue_timeout_s
        # At most one call per pooled connection, so the pool never runs dry
        # and queueing here is not mistaken for Redis being slow.
        self._slots = asyncio.Semaphore(max_connections)
        self._cooldown_s = cooldown_s
        self._warn_interval_s = warn_interval_s
        self._skip_until = float("-inf")
        self._last_warning = float("-inf")
        self._suppressed = 0
        self._log = structlog.get_logger("aster.limits")

    async def acquire(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """Takes `cost` tokens from bucket `key` if it holds them (fails open)."""
        return await self.acquire_many([Limit(key, rate, burst)], cost)

    async def acquire_many(self, limits: Sequence[Limit], cost: float = 1.0) -> Decision:
        """Takes `cost` from every bucket of `limits` if all hold it, else
        from none, in one script run (fails open)."""
        unique = validate(limits, cost)
        if time.monotonic() < self._skip_until:
            self._note_outage("in cooldown after a failure")
            return fail_open(unique)
        keys = [self._prefix + limit.key for limit in unique]
        args: list[float] = [cost, EPSILON]
        for limit in unique:
            args += [limit.rate, limit.burst]
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            self._note_outage("queued too long for a redis connection (overloaded)")
            return fail_open(unique)
        try:
            if time.monotonic() < self._skip_until:  # it failed while we queued
                self._note_outage("in cooldown after a failure")
                return fail_open(unique)
            # The socket timeouts bound each step; this bounds the whole
            # (name resolution and the NOSCRIPT fallback included).
            async with asyncio.timeout(self._timeout_s * 2):
                reply = await self._run(keys, args)
            allowed, wait, remaining, index = reply
            return Decision(
                allowed=bool(int(allowed)),
                retry_after_s=float(wait),
                remaining=float(remaining),
                limited_by=unique[int(index) - 1].key,
            )
        except (RedisError, OSError, ValueError, TypeError, IndexError) as err:
            # OSError covers TimeoutError; ValueError and friends a reply of
            # an unexpected shape. Either way: allow, and say so.
            self._skip_until = time.monotonic() + self._cooldown_s
            self._note_outage(f"{type(err).__name__}: {err}")
            return fail_open(unique)
        finally:
            self._slots.release()

    async def _run(self, keys: list[str], args: list[float]) -> list[bytes | int]:
        """Runs the script by its SHA, sending it whole when Redis lacks it
        (after a restart or SCRIPT FLUSH; EVAL also caches it again)."""
        try:
            reply = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            reply = await self._redis.eval(SCRIPT, len(keys), *keys, *args)
        return list(reply)

    def _note_outage(self, reason: str) -> None:
        """Logs that calls are being allowed unchecked, at most once per
        `warn_interval_s` (with how many such calls went unlogged)."""
        now = time.monotonic()
        if now - self._last_warning < self._warn_interval_s:
            self._suppressed += 1
            return
        self._log.warning(
            "rate limiter cannot reach redis; allowing requests unchecked (fail open)",
            error=reason,
            suppressed=self._suppressed,
        )
        self._last_warning = now
        self._suppressed = 0

    async def close(self) -> None:
        """Closes the connections."""
        await self._redis.aclose()
