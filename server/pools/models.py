"""Domain types of the pool: members, their state and the pool's figures."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class PoolAgentState(enum.Enum):
    """Where a pooled agent is in its lifecycle."""

    WARMING = "WARMING"
    LIVE = "LIVE"
    HIBERNATED = "HIBERNATED"
    DRAINING = "DRAINING"


@dataclass(frozen=True)
class PoolMember:
    """A pooled agent as stored (shared by every replica)."""

    agent_id: str
    state: PoolAgentState
    create_time: datetime
    # The replica holding the agent live, and until when it vouches for it.
    replica: str = ""
    live_until: datetime | None = None
    last_use_time: datetime | None = None
    hibernate_time: datetime | None = None
    # What hibernation kept: the agent revision and its recent sessions.
    snapshot: dict[str, Any] = field(default_factory=dict)

    def effective_state(self, now: datetime) -> PoolAgentState:
        """The state, counting a LIVE row whose replica stopped vouching for
        it (crashed, or partitioned away) as HIBERNATED."""
        if self.state is PoolAgentState.LIVE and (self.live_until is None or self.live_until < now):
            return PoolAgentState.HIBERNATED
        return self.state


@dataclass(frozen=True)
class PoolAgentView:
    """A pooled agent as ListPoolAgents and GetPoolAgent report it."""

    agent_id: str
    state: PoolAgentState
    active_runs: int
    create_time: datetime
    last_use_time: datetime | None

    @property
    def id(self) -> str:
        """The agent's id (the key of pagination cursors)."""
        return self.agent_id


@dataclass(frozen=True)
class PoolStats:
    """The pool's figures for one tenant on this replica."""

    capacity: int
    live: int
    hibernated: int
    hits: int
    cold_starts: int
    evictions: int
    admission_timeouts: int
    resume_latency_p50_ms: float
    resume_latency_p99_ms: float


@dataclass(frozen=True)
class PoolSettings:
    """Capacity, idle time and admission timeout (ASTER_POOL_*)."""

    max_agents: int = 100
    idle_s: float = 300.0
    admission_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    # Recent sessions whose context a hibernated agent re-loads on resume.
    resume_sessions: int = 8
