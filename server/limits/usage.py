"""Daily token usage per tenant, the counter behind
ASTER_QUOTA_MAX_TOKENS_PER_DAY: one interface, in-process or in Redis.

A tenant's count of a day (UTC) starts from the database (`seed`: the
tokens of its runs since midnight) the first time it is read, then grows
by what runs charge as they finish. Charging a count that was never read
does nothing: the database already holds that run's tokens, so the first
read counts them. Counts are kept for the day only (Redis keys expire).

This is a quota, not a bill: a run's tokens are known when it ends, so
runs started while a tenant was under its quota may take it over; and a
run finishing during the first read of a day may be missed by that day's
count (the read saw the database before the run was stored, the charge
came before the count existed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time
from typing import Protocol

from aster.server.clock import utcnow

# (tenant, since) -> tokens of the tenant's runs since `since` (the database).
Seed = Callable[[str, datetime], Awaitable[int]]
Clock = Callable[[], datetime]


def day_of(now: datetime) -> str:
    """The UTC day of `now`, as `YYYYMMDD`."""
    return now.astimezone(UTC).strftime("%Y%m%d")


def day_start(now: datetime) -> datetime:
    """Midnight (UTC) of `now`'s day."""
    return datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)


class TokenUsage(Protocol):
    """Tokens each tenant used today (UTC), shared by every caller (and,
    for the Redis implementation, by every replica)."""

    name: str

    async def add(self, tenant: str, tokens: int) -> None:
        """Charges `tokens` to the tenant's count of today. Never raises: a
        charge that cannot be stored now is logged (and retried later)."""
        ...

    async def today(self, tenant: str) -> int:
        """The tenant's tokens of today."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class InProcessTokenUsage:
    """Counts in a dict of this process (the embedded mode: one process
    runs every run, so its count is the tenant's)."""

    name = "in_process"

    def __init__(self, seed: Seed, *, clock: Clock = utcnow) -> None:
        self._seed = seed
        self._clock = clock
        self._day = ""
        self._counts: dict[str, int] = {}

    def _roll(self) -> datetime:
        """Forgets yesterday's counts; the current time."""
        now = self._clock()
        if day_of(now) != self._day:
            self._day = day_of(now)
            self._counts.clear()
        return now

    async def add(self, tenant: str, tokens: int) -> None:
        """Adds to the tenant's count of today, if it was read today."""
        self._roll()
        if tokens > 0 and tenant in self._counts:
            self._counts[tenant] += tokens

    async def today(self, tenant: str) -> int:
        """The tenant's count, seeded from the database on first read."""
        now = self._roll()
        if tenant not in self._counts:
            seeded = await self._seed(tenant, day_start(now))
            if day_of(self._clock()) == self._day:
                self._counts.setdefault(tenant, seeded)
            return self._counts.get(tenant, seeded)
        return self._counts[tenant]

    async def close(self) -> None:
        """Forgets every count."""
        self._counts.clear()
