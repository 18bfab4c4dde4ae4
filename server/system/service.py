"""What the server reports about itself."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from aster.server.agents.service import AgentService
from aster.server.bus.base import EventBus
from aster.server.clock import utcnow
from aster.server.sessions.service import SessionService
from aster.server.storage.database import Database

VERSION = "0.1.0"
# How long a dependency probe's answer is reused.
PROBE_CACHE_S = 1.0


@dataclass(frozen=True)
class ServerInfo:
    """Static facts about this server process."""

    version: str
    start_time: datetime
    storage_backend: str
    event_bus: str
    features: tuple[str, ...]
    workers: int


@dataclass(frozen=True)
class HealthReport:
    """The state of the server and its dependencies."""

    healthy: bool
    checks: dict[str, str]


class SystemService:
    """Info, resource counts and dependency checks."""

    def __init__(
        self,
        info: ServerInfo,
        database: Database,
        agents: AgentService,
        sessions: SessionService,
        bus: EventBus,
    ) -> None:
        self.info = info
        self._database = database
        self._agents = agents
        self._sessions = sessions
        self._bus = bus
        self._last: tuple[float, HealthReport] | None = None

    def uptime_seconds(self) -> float:
        """Seconds since this process started."""
        return (utcnow() - self.info.start_time).total_seconds()

    async def resource_counts(self, tenant: str) -> dict[str, int]:
        """How many of each resource the tenant has."""
        return {
            "agents": await self._agents.count(tenant),
            "sessions": await self._sessions.count(tenant),
        }

    async def check_health(self) -> HealthReport:
        """Pings the database and, when configured, Redis. The result is
        reused for PROBE_CACHE_S, so frequent probes cost nothing."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < PROBE_CACHE_S:
            return self._last[1]
        database_ok, bus_ok = await asyncio.gather(self._database.ping(), self._bus.ping())
        checks = {"database": "ok" if database_ok else "unavailable"}
        if self.info.event_bus == "redis":
            checks["redis"] = "ok" if bus_ok else "unavailable"
        report = HealthReport(healthy=all(v == "ok" for v in checks.values()), checks=checks)
        self._last = (now, report)
        return report
