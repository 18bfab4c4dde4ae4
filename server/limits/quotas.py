"""Per-tenant quotas; exceeding one is RESOURCE_EXHAUSTED naming it."""

from __future__ import annotations

from dataclasses import dataclass

from aster.server.errors import ResourceExhausted


@dataclass(frozen=True)
class Quotas:
    """The caps of every tenant; 0 means unlimited."""

    max_agents: int = 0
    max_concurrent_runs: int = 0
    max_tokens_per_day: int = 0

    def check(self, name: str, used: int, tenant: str) -> None:
        """Raises if `used` has reached quota `name`."""
        limit: int = getattr(self, name)
        if limit and used >= limit:
            raise ResourceExhausted(
                f"tenant {tenant!r} reached its quota {name}={limit} (ASTER_QUOTA_{name.upper()})",
                quota=name,
                limit=str(limit),
            )
