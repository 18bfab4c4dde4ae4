"""What the server reports about itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.sessions.service import SessionService
from aster.server.storage.database import Database

VERSION = "0.1.0"


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
        self, info: ServerInfo, database: Database, agents: AgentService, sessions: SessionService
    ) -> None:
        self.info = info
        self._database = database
        self._agents = agents
        self._sessions = sessions

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
        """Pings every dependency."""
        database_ok = await self._database.ping()
        return HealthReport(
            healthy=database_ok, checks={"database": "ok" if database_ok else "unavailable"}
        )
