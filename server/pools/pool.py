"""The live set of one replica: admission, warming, hibernation, eviction."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from aster.server.agents.models import Agent
from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import NotFound, ResourceExhausted
from aster.server.ids import new_id
from aster.server.pools import metrics
from aster.server.pools.context import SessionContextLoader
from aster.server.pools.live import LiveAgent
from aster.server.pools.models import PoolAgentState, PoolMember, PoolSettings
from aster.server.runs.dependencies import ProviderSource
from aster.server.storage.pool_repository import PoolRepository

_log = structlog.get_logger("aster.pools")
Key = tuple[str, str]
# Resume latencies kept per tenant for the p50/p99 of GetPoolStats.
LATENCY_SAMPLES = 1024


@dataclass
class TenantCounters:
    """What one tenant's pooled agents did on this replica since it started."""

    hits: int = 0
    cold_starts: int = 0
    evictions: int = 0
    admission_timeouts: int = 0
    resume_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))


class AgentPool:
    """Keeps up to `max_agents` pooled agents live in this replica.

    The membership and hibernated state live in the shared table; the live
    instances are this process's own. The last replica to warm an agent
    holds it (its row names the replica and how long the hold lasts); a
    replica that finds its hold taken or the agent gone drops its instance."""

    def __init__(
        self,
        repository: PoolRepository,
        agents: AgentService,
        loader: SessionContextLoader,
        providers: ProviderSource,
        settings: PoolSettings,
    ) -> None:
        self.replica = new_id("rep")
        self.settings = settings
        self._repo = repository
        self._agents = agents
        self._loader = loader
        self._providers = providers
        self._live: dict[Key, LiveAgent] = {}
        self._reserved = 0
        self._changed = asyncio.Condition()
        # One lock per agent while someone uses it (no entry per agent ever run).
        self._locks: weakref.WeakValueDictionary[Key, asyncio.Lock] = weakref.WeakValueDictionary()
        # Agents dropped whose hibernation is being written: a warm-up of one
        # waits for the write, or the write would land on its fresh hold.
        self._hibernating: dict[Key, asyncio.Event] = {}
        self._counters: defaultdict[str, TenantCounters] = defaultdict(TenantCounters)
        self._sweeper: asyncio.Task[None] | None = None
        self.sweep_s = min(max(settings.idle_s / 4, 0.05), 5.0)
        self.hold_s = 3 * self.sweep_s + 1.0
        metrics.CAPACITY.set(settings.max_agents)

    # -- lifecycle of the process -------------------------------------------

    async def start(self) -> None:
        """Starts hibernating idle agents and renewing this replica's holds."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="pool-sweeper")

    async def close(self) -> None:
        """Stops the sweeper and hibernates every live agent, so the next
        start (here or on another replica) resumes them with their state."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for live in list(self._live.values()):
            self._drop(live, hibernating=True)
            with contextlib.suppress(Exception):
                await self._persist(live, "shutdown")

    # -- the run path -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(self, tenant: str, agent_id: str) -> AsyncIterator[LiveAgent]:
        """The agent's live instance for one run: a hit if it is live here,
        else a cold start (waiting for room up to the admission timeout, then
        RESOURCE_EXHAUSTED). Agents outside the pool get a throwaway instance."""
        live = await self._checkout(tenant, agent_id)
        try:
            yield live
        finally:
            await self._checkin(live)

    async def _checkout(self, tenant: str, agent_id: str) -> LiveAgent:
        key = (tenant, agent_id)
        async with self._lock(key):
            live = self._live.get(key)
            if live is not None:
                live.active_runs += 1  # pinned: not evicted while the run uses it
                try:
                    await self._refresh_config(live)
                except NotFound:
                    # The agent was deleted (its pool row went with it): free
                    # the slot now rather than at the next sweep.
                    live.active_runs -= 1
                    self._drop(live)
                    await self._notify()
                    raise
                except BaseException:
                    live.active_runs -= 1
                    raise
                self._counters[tenant].hits += 1
                metrics.HITS.inc()
                return live
            await self._hibernated(key)
            member = await self._repo.find(tenant, agent_id)
            if member is None or member.state is PoolAgentState.DRAINING:
                agent = await self._agents.get(tenant, agent_id)
                return self._instance(tenant, agent, pooled=False)
            live = await self._bring_live(tenant, member, pin=True)
            if live.pooled:
                self._counters[tenant].cold_starts += 1
                metrics.COLD_STARTS.inc()
            return live

    async def _checkin(self, live: LiveAgent) -> None:
        """Ends a run's use; the time of use is written by the next sweep
        (or the hibernation), not on the run's path."""
        live.active_runs -= 1
        live.last_used = time.monotonic()
        live.last_use_time = utcnow()
        live.use_unsaved = True
        if live.pooled:
            await self._notify()

    async def _refresh_config(self, live: LiveAgent) -> None:
        """Brings the configuration up to date (one primary-key read; it also
        sees an update or a DISABLED agent) and looks the provider up again:
        the registry keeps its SDK client warm, and re-reads the API key so
        that a rotated key takes effect on the next run, live agent or not."""
        agent = await self._agents.get(live.tenant, live.agent.id)
        live.provider = self._providers.provider(agent.spec.model)
        live.agent = agent

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _instance(self, tenant: str, agent: Agent, *, pooled: bool) -> LiveAgent:
        provider = self._providers.provider(agent.spec.model)
        return LiveAgent(tenant, agent, provider, self._loader, pooled)

    # -- warming and admission ----------------------------------------------

    async def resume(self, tenant: str, member: PoolMember) -> bool:
        """Warms the pooled agent now if it is not live here; False if it
        already was."""
        key = (tenant, member.agent_id)
        async with self._lock(key):
            if key in self._live:
                return False
            if await self._hibernated(key):
                member = await self._repo.find(tenant, member.agent_id) or member
            await self._bring_live(tenant, member, pin=False)
            return True

    def is_live(self, tenant: str, agent_id: str) -> bool:
        """Whether the agent is live in this replica."""
        return (tenant, agent_id) in self._live

    def local_last_use(self, tenant: str, agent_id: str) -> datetime | None:
        """When the agent's live instance here last ended a run (it reaches
        the table with the next sweep)."""
        live = self._live.get((tenant, agent_id))
        return live.last_use_time if live is not None else None

    def local_active_runs(self, tenant: str, agent_id: str) -> int:
        """Runs using the agent's live instance here."""
        live = self._live.get((tenant, agent_id))
        return live.active_runs if live is not None else 0

    async def _bring_live(self, tenant: str, member: PoolMember, *, pin: bool) -> LiveAgent:
        """Admits, then warms the member (its caller holds the agent's lock)."""
        await self._admit(tenant)
        try:
            live = await self._warm(tenant, member)
        except BaseException:
            self._reserved -= 1
            await self._notify()
            raise
        self._reserved -= 1
        if pin:
            live.active_runs += 1
        if live.pooled:
            self._live[live.key] = live
            metrics.LIVE_AGENTS.set(len(self._live))
        # Waiters re-check: a slot came back, or an idle live agent (a warm-up
        # without a run) can now be evicted.
        await self._notify()
        return live

    async def _warm(self, tenant: str, member: PoolMember) -> LiveAgent:
        """Resolves the agent and its provider client, and re-loads the
        context of the sessions it had when it hibernated."""
        started = time.perf_counter()
        try:
            agent = await self._agents.get(tenant, member.agent_id)
        except NotFound:
            # The agent was deleted: it leaves the pool too.
            await self._repo.remove(tenant, member.agent_id)
            raise
        live = self._instance(tenant, agent, pooled=True)
        sessions = member.snapshot.get("sessions", [])
        for session_id in list(sessions)[: self.settings.resume_sessions]:
            live.sessions[str(session_id)] = await self._loader.load(tenant, str(session_id))
        if not await self._repo.mark_live(
            tenant, member.agent_id, self.replica, self._hold_until()
        ):
            live.pooled = False  # left the pool meanwhile: serve this run only
            live.sessions.clear()
            return live
        elapsed = time.perf_counter() - started
        self._counters[tenant].resume_ms.append(elapsed * 1000)
        metrics.RESUME_SECONDS.observe(elapsed)
        live.warmed_at = live.last_used = time.monotonic()
        return live

    async def _admit(self, tenant: str) -> None:
        """Reserves a live slot: a free one, or the least recently used idle
        agent's (hibernated now); waits for one up to the admission timeout,
        then RESOURCE_EXHAUSTED."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.admission_timeout_s
        victim: LiveAgent | None = None
        async with self._changed:
            while True:
                if len(self._live) + self._reserved < self.settings.max_agents:
                    break
                victim = self._least_recently_used_idle()
                if victim is not None:
                    self._drop(victim, hibernating=True)
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self._counters[tenant].admission_timeouts += 1
                    metrics.ADMISSION_TIMEOUTS.inc()
                    raise ResourceExhausted(
                        f"the agent pool is full: all {self.settings.max_agents} live agents "
                        f"stayed busy for {self.settings.admission_timeout_s:g} s "
                        "(ASTER_POOL_MAX_AGENTS, ASTER_POOL_ADMISSION_TIMEOUT_S)",
                        retry_after_s=1.0,
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
            self._reserved += 1
        if victim is not None:
            self._counters[victim.tenant].evictions += 1
            metrics.EVICTIONS.inc()
            await self._persist(victim, "capacity")

    def _least_recently_used_idle(self) -> LiveAgent | None:
        idle = [live for live in self._live.values() if live.active_runs == 0]
        return min(idle, key=lambda live: live.last_used, default=None)

    # -- hibernation --------------------------------------------------------

    def _drop(self, live: LiveAgent, *, hibernating: bool = False) -> None:
        """Takes the instance out of the live set; `hibernating` when its
        state is written next (by `_persist`)."""
        if self._live.get(live.key) is live:
            del self._live[live.key]
            metrics.LIVE_AGENTS.set(len(self._live))
            if hibernating:
                self._hibernating[live.key] = asyncio.Event()

    async def _hibernated(self, key: Key) -> bool:
        """Waits until the agent's hibernation, if one is being written, is
        stored; True if there was one (re-read the member then)."""
        writing = self._hibernating.get(key)
        if writing is None:
            return False
        await writing.wait()
        return True

    async def _persist(self, live: LiveAgent, reason: str) -> None:
        """Stores the dropped instance's state as HIBERNATED."""
        metrics.HIBERNATIONS.labels(reason=reason).inc()
        try:
            await self._repo.hibernate(
                live.tenant,
                live.agent.id,
                self.replica,
                utcnow(),
                live.snapshot(),
                last_use_time=live.last_use_time,
            )
        finally:
            writing = self._hibernating.pop(live.key, None)
            if writing is not None:
                writing.set()
        _log.info("hibernated a pooled agent", agent_id=live.agent.id, reason=reason)

    async def drop(self, tenant: str, agent_id: str) -> None:
        """Drops the agent's live instance here without keeping its state
        (it leaves the pool); runs still using it finish with it."""
        live = self._live.get((tenant, agent_id))
        if live is not None:
            self._drop(live)
            await self._notify()

    async def wait_idle(self, tenant: str, agent_id: str, timeout_s: float) -> bool:
        """Waits until the agent's live instance here serves no run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._changed:
            while self.local_active_runs(tenant, agent_id) > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._changed.wait()
        return True

    async def sweep(self) -> None:
        """Hibernates agents idle for ASTER_POOL_IDLE_S, renews this
        replica's holds, and drops instances whose hold was taken over."""
        began = time.monotonic()
        for live in list(self._live.values()):
            if live.active_runs == 0 and began - live.last_used >= self.settings.idle_s:
                self._drop(live, hibernating=True)
                await self._persist(live, "idle")
        uses = [live for live in self._live.values() if live.use_unsaved]
        for live in uses:
            live.use_unsaved = False
        await self._repo.record_uses(
            [
                (live.tenant, live.agent.id, live.last_use_time)
                for live in uses
                if live.last_use_time
            ]
        )
        held = await self._repo.renew(self.replica, self._hold_until())
        for key, live in list(self._live.items()):
            if key not in held and live.active_runs == 0 and live.warmed_at < began:
                _log.info("dropped an agent no longer held here", agent_id=live.agent.id)
                self._drop(live)
        await self._notify()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                await self.sweep()
            except Exception as err:
                _log.warning("pool sweep failed; retrying", error=str(err))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _hold_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.hold_s)

    # -- figures --------------------------------------------------------------

    def counters(self, tenant: str) -> TenantCounters:
        """The tenant's counters on this replica."""
        return self._counters[tenant]
