"""The rules of the pool: membership, warming on request, draining, figures."""

from __future__ import annotations

import asyncio
import builtins
import statistics
from datetime import datetime

from aster.server.agents.models import AgentSpec
from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition
from aster.server.ids import check_id
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.pools.filters import parse_pool_filter
from aster.server.pools.models import (
    PoolAgentState,
    PoolAgentView,
    PoolMember,
    PoolStats,
)
from aster.server.pools.pool import AgentPool
from aster.server.storage.pool_repository import PoolRepository

# How often RemovePoolAgent checks whether the agent's runs have ended.
DRAIN_POLL_S = 0.1


class PoolService:
    """Adds, lists, warms and removes pooled agents; reports the figures."""

    def __init__(self, repository: PoolRepository, pool: AgentPool, agents: AgentService) -> None:
        self._repo = repository
        self._pool = pool
        self._agents = agents

    async def create(self, tenant: str, agent_id: str, spec: AgentSpec | None) -> PoolAgentView:
        """Pools an existing agent (`agent_id`) or a new one (`spec`) and
        warms it; all or nothing: if it cannot be warmed, it is not pooled."""
        if spec is not None:
            agent = await self._agents.create(tenant, spec)
        else:
            agent = await self._agents.get(tenant, check_id(agent_id, "agent_id"))
        member = PoolMember(
            agent_id=agent.id, state=PoolAgentState.HIBERNATED, create_time=utcnow()
        )
        await self._repo.add(tenant, member)
        try:
            await self._pool.resume(tenant, member)
        except BaseException:
            await asyncio.shield(self._repo.remove(tenant, agent.id))
            raise
        return await self.get(tenant, agent.id)

    async def get(self, tenant: str, agent_id: str) -> PoolAgentView:
        """One pooled agent, or NOT_FOUND."""
        member = await self._repo.get(tenant, check_id(agent_id, "agent_id"))
        return (await self._views(tenant, [member]))[0]

    async def list(
        self, tenant: str, size: int, token: str, filter_text: str
    ) -> Page[PoolAgentView]:
        """Pooled agents, oldest first, optionally of one state."""
        state = parse_pool_filter(filter_text)
        limit = page_size(size)
        query = f"state={state.value if state else ''}"
        after = decode_token(token, query)
        members, more = await self._repo.list_page(tenant, state, utcnow(), after, limit)
        views = await self._views(tenant, members)
        return next_page(views, more, query, by_create_time)

    async def resume(self, tenant: str, agent_id: str) -> PoolAgentView:
        """Warms the pooled agent now (nothing changes if it is live)."""
        member = await self._repo.get(tenant, check_id(agent_id, "agent_id"))
        if member.state is PoolAgentState.DRAINING:
            raise FailedPrecondition(
                f"agent {agent_id!r} is being removed from the pool", field="agent_id"
            )
        await self._pool.resume(tenant, member)
        return await self.get(tenant, agent_id)

    async def resume_agent(self, tenant: str, agent_id: str) -> None:
        """AgentService.ResumeAgent: warms the agent now. NOT_FOUND for an
        unknown agent; FAILED_PRECONDITION for one that is not pooled (only
        pooled agents hibernate)."""
        agent = await self._agents.get(tenant, check_id(agent_id, "id"))
        if await self._repo.find(tenant, agent.id) is None:
            raise FailedPrecondition(
                f"agent {agent.id!r} is not in the pool, so it never hibernates; add it with "
                "CreatePooledAgent (POST /v1/pool/agents) to keep it warm",
                field="id",
            )
        await self.resume(tenant, agent.id)

    async def remove(self, tenant: str, agent_id: str) -> None:
        """Drains the agent (no new pooled runs; its runs finish, for up to
        ASTER_POOL_DRAIN_TIMEOUT_S), then takes it out of the pool."""
        await self._repo.start_draining(tenant, check_id(agent_id, "agent_id"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._pool.settings.drain_timeout_s
        await self._pool.wait_idle(tenant, agent_id, self._pool.settings.drain_timeout_s)
        while loop.time() < deadline:
            if not (await self._repo.active_runs(tenant, [agent_id])).get(agent_id):
                break
            await asyncio.sleep(DRAIN_POLL_S)
        await self._pool.drop(tenant, agent_id)
        await self._repo.remove(tenant, agent_id)

    async def stats(self, tenant: str) -> PoolStats:
        """The tenant's pool figures: states from the shared table, counters
        and latencies of this replica since it started."""
        states = await self._repo.count_states(tenant, utcnow())
        counters = self._pool.counters(tenant)
        samples = sorted(counters.resume_ms)
        return PoolStats(
            capacity=self._pool.settings.max_agents,
            live=states[PoolAgentState.LIVE],
            hibernated=states[PoolAgentState.HIBERNATED],
            hits=counters.hits,
            cold_starts=counters.cold_starts,
            evictions=counters.evictions,
            admission_timeouts=counters.admission_timeouts,
            resume_latency_p50_ms=_percentile(samples, 50),
            resume_latency_p99_ms=_percentile(samples, 99),
        )

    async def _views(
        self, tenant: str, members: builtins.list[PoolMember]
    ) -> builtins.list[PoolAgentView]:
        now = utcnow()
        active = await self._repo.active_runs(tenant, [m.agent_id for m in members])
        return [
            PoolAgentView(
                agent_id=m.agent_id,
                state=(
                    PoolAgentState.LIVE
                    if self._pool.is_live(tenant, m.agent_id)
                    and m.state is not PoolAgentState.DRAINING
                    else m.effective_state(now)
                ),
                active_runs=active.get(m.agent_id, 0),
                create_time=m.create_time,
                last_use_time=_latest(
                    m.last_use_time, self._pool.local_last_use(tenant, m.agent_id)
                ),
            )
            for m in members
        ]


def _latest(*times: datetime | None) -> datetime | None:
    """The latest of the known times."""
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _percentile(sorted_samples: list[float], percent: int) -> float:
    """The interpolated percentile (0 without samples)."""
    if not sorted_samples:
        return 0.0
    if len(sorted_samples) == 1:
        return sorted_samples[0]
    return statistics.quantiles(sorted_samples, n=100, method="inclusive")[percent - 1]
