"""A live agent instance: resolved configuration, warm provider client and
cached session contexts."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from aster.server.agents.models import Agent
from aster.server.pools.context import SessionContext, SessionContextLoader
from aster.server.providers.base import ModelProvider

# Sessions whose context one live agent keeps, most recently used first.
MAX_CACHED_SESSIONS = 32


@dataclass(eq=False)
class LiveAgent:
    """One agent ready to serve runs. `pooled` is False for agents outside
    the pool: those get a fresh instance per run that nobody keeps."""

    tenant: str
    agent: Agent
    provider: ModelProvider
    loader: SessionContextLoader
    pooled: bool
    warmed_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    active_runs: int = 0
    # When a run last ended, and whether the table has not seen it yet.
    last_use_time: datetime | None = None
    use_unsaved: bool = False
    sessions: OrderedDict[str, SessionContext] = field(default_factory=OrderedDict)

    @property
    def key(self) -> tuple[str, str]:
        """(tenant, agent id)."""
        return self.tenant, self.agent.id

    async def context(self, session_id: str) -> SessionContext:
        """The session's context: the cached one brought up to date, or a
        fresh read the first time."""
        cached = self.sessions.pop(session_id, None)
        if cached is None:
            context = await self.loader.load(self.tenant, session_id)
        else:
            context = await self.loader.refresh(self.tenant, cached)
        if self.pooled:
            self.sessions[session_id] = context
            self.sessions.move_to_end(session_id, last=False)
            while len(self.sessions) > MAX_CACHED_SESSIONS:
                self.sessions.popitem()
        return context

    def forget(self, session_id: str) -> None:
        """Drops the session's cached context (a run rolled it back)."""
        self.sessions.pop(session_id, None)

    def snapshot(self) -> dict[str, object]:
        """What hibernation keeps of this instance: the configuration it ran
        and its recent sessions, so a resume re-loads their context."""
        return {
            "agent_revision": self.agent.revision,
            "sessions": list(self.sessions),
        }
