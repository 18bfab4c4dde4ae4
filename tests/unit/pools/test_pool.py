"""The live set of a replica against a real database: hits and cold starts,
capacity pressure, admission timeout, idle hibernation and resume, and the
PoolService rules on top."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aster.server.agents.models import AgentSpec, AgentState
from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from aster.server.ids import new_id
from aster.server.pools.context import SessionContextLoader
from aster.server.pools.models import PoolAgentState, PoolSettings
from aster.server.pools.pool import AgentPool
from aster.server.pools.service import PoolService
from aster.server.providers.registry import ProviderRegistry
from aster.server.sessions.models import Message, Session, SessionSpec
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.storage.pool_repository import PoolRepository
from aster.server.storage.session_repository import SessionRepository


@dataclass
class Harness:
    agents: AgentService
    sessions: SessionRepository
    repo: PoolRepository
    pool: AgentPool
    service: PoolService

    async def pooled(self, tenant: str = "t1") -> str:
        agent = await self.agents.create(tenant, AgentSpec(display_name="a"))
        await self.service.create(tenant, agent.id, None)
        return agent.id

    async def session_with(self, agent_id: str, *texts: str, tenant: str = "t1") -> str:
        now = utcnow()
        session = await self.sessions.create(
            tenant,
            Session(
                id=new_id("ses"),
                spec=SessionSpec(agent_id=agent_id),
                create_time=now,
                update_time=now,
            ),
        )
        for text in texts:
            await self.say(session.id, text, tenant=tenant)
        return session.id

    async def say(self, session_id: str, text: str, tenant: str = "t1") -> Message:
        return await self.sessions.append_message(
            tenant,
            Message(
                id=new_id("msg"),
                session_id=session_id,
                role="user",
                content=text,
                create_time=utcnow(),
            ),
        )


def build(database: Database, tmp_path: Path, **settings: float) -> Harness:
    agents = AgentService(AgentRepository(database))
    sessions = SessionRepository(database)
    repo = PoolRepository(database)
    pool = AgentPool(
        repo,
        agents,
        SessionContextLoader(sessions, repo),
        ProviderRegistry(tmp_path),
        PoolSettings(**settings),  # type: ignore[arg-type]
    )
    return Harness(agents, sessions, repo, pool, PoolService(repo, pool, agents))


@pytest.fixture
async def harness(database: Database, tmp_path: Path) -> AsyncIterator[Harness]:
    h = build(database, tmp_path, max_agents=2, idle_s=60, admission_timeout_s=0.3)
    yield h
    await h.pool.close()


async def test_first_run_of_a_hibernated_agent_is_a_cold_start_then_hits(
    harness: Harness,
) -> None:
    agent_id = await harness.pooled()
    # CreatePooledAgent warmed it: the first run is a hit.
    async with harness.pool.acquire("t1", agent_id) as live:
        assert live.pooled and live.agent.id == agent_id
    await harness.pool.sweep()  # keeps the hold
    await harness.pool.close()  # shutdown hibernates it
    assert (await harness.repo.get("t1", agent_id)).state is PoolAgentState.HIBERNATED
    async with harness.pool.acquire("t1", agent_id):
        pass
    async with harness.pool.acquire("t1", agent_id):
        pass
    counters = harness.pool.counters("t1")
    assert (counters.hits, counters.cold_starts) == (2, 1)
    assert len(counters.resume_ms) == 2  # the create and the cold start
    stats = await harness.service.stats("t1")
    assert (stats.live, stats.hibernated, stats.capacity) == (1, 0, 2)
    assert stats.resume_latency_p99_ms >= stats.resume_latency_p50_ms > 0
    assert (await harness.service.stats("t2")).hits == 0


async def test_agents_outside_the_pool_run_without_being_counted(harness: Harness) -> None:
    agent = await harness.agents.create("t1", AgentSpec(display_name="plain"))
    async with harness.pool.acquire("t1", agent.id) as live:
        assert not live.pooled
    assert not harness.pool.is_live("t1", agent.id)
    counters = harness.pool.counters("t1")
    assert (counters.hits, counters.cold_starts) == (0, 0)
    with pytest.raises(NotFound):
        async with harness.pool.acquire("t1", "agt_missing"):
            pass


async def test_capacity_pressure_evicts_the_least_recently_used_idle_agent(
    harness: Harness,
) -> None:
    first, second = await harness.pooled(), await harness.pooled()
    session = await harness.session_with(first, "remember me")
    async with harness.pool.acquire("t1", first) as live:
        await live.context(session)
    async with harness.pool.acquire("t1", second):
        pass  # `first` is now the least recently used
    third = await harness.pooled()
    assert harness.pool.is_live("t1", second) and harness.pool.is_live("t1", third)
    assert not harness.pool.is_live("t1", first)
    evicted = await harness.repo.get("t1", first)
    assert evicted.state is PoolAgentState.HIBERNATED
    assert evicted.snapshot["sessions"] == [session]
    stats = await harness.service.stats("t1")
    assert (stats.live, stats.hibernated, stats.evictions) == (2, 1, 1)
    # Its next run resumes it with the session's context re-loaded.
    async with harness.pool.acquire("t1", first) as live:
        assert [m.content for m in live.sessions[session].messages] == ["remember me"]
    assert (await harness.service.stats("t1")).evictions == 2


async def test_admission_waits_then_refuses_when_every_live_agent_is_busy(
    harness: Harness,
) -> None:
    busy_a, busy_b = await harness.pooled(), await harness.pooled()
    waiting = await harness.pooled()  # evicts busy_a
    await harness.pool.close()
    async with harness.pool.acquire("t1", busy_a), harness.pool.acquire("t1", busy_b):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ResourceExhausted) as caught:
            async with harness.pool.acquire("t1", waiting):
                pass
        waited = asyncio.get_running_loop().time() - started
        assert 0.25 <= waited < 2
        assert "ASTER_POOL_MAX_AGENTS" in caught.value.message
    assert harness.pool.counters("t1").admission_timeouts == 1
    # Once one is idle, the waiting agent gets its slot.
    async with harness.pool.acquire("t1", waiting) as live:
        assert live.pooled


async def test_a_waiting_run_gets_the_slot_as_soon_as_an_agent_is_idle(
    database: Database, tmp_path: Path
) -> None:
    h = build(database, tmp_path, max_agents=1, idle_s=60, admission_timeout_s=5)
    try:
        first, second = await h.pooled(), await h.pooled()
        released = asyncio.Event()

        async def hold_first() -> None:
            async with h.pool.acquire("t1", first):
                await asyncio.sleep(0.3)
            released.set()

        holder = asyncio.create_task(hold_first())
        await asyncio.sleep(0.05)
        async with h.pool.acquire("t1", second) as live:
            assert released.is_set() and live.pooled
        await holder
        # second evicted first; first evicted second; second evicted first again.
        assert h.pool.counters("t1").evictions == 3
    finally:
        await h.pool.close()


async def test_idle_agents_hibernate_and_resume_with_their_sessions(
    database: Database, tmp_path: Path
) -> None:
    h = build(database, tmp_path, max_agents=5, idle_s=0.1, admission_timeout_s=1)
    try:
        agent_id = await h.pooled()
        session = await h.session_with(agent_id, "one", "two")
        async with h.pool.acquire("t1", agent_id) as live:
            context = await live.context(session)
            assert [m.content for m in context.messages] == ["one", "two"]
        await asyncio.sleep(0.15)
        await h.pool.sweep()
        assert not h.pool.is_live("t1", agent_id)
        assert (await h.service.get("t1", agent_id)).state is PoolAgentState.HIBERNATED
        assert (await h.service.stats("t1")).evictions == 0  # idle, not evicted
        view = await h.service.resume("t1", agent_id)
        assert view.state is PoolAgentState.LIVE
        async with h.pool.acquire("t1", agent_id) as live:
            assert [m.content for m in live.sessions[session].messages] == ["one", "two"]
        assert h.pool.counters("t1").cold_starts == 0  # ResumePoolAgent warmed it
    finally:
        await h.pool.close()


async def test_cached_context_follows_writes_and_rollbacks(harness: Harness) -> None:
    agent_id = await harness.pooled()
    session = await harness.session_with(agent_id, "a", "b")
    async with harness.pool.acquire("t1", agent_id) as live:
        assert len((await live.context(session)).messages) == 2
    await harness.say(session, "c")  # written elsewhere (another replica)
    async with harness.pool.acquire("t1", agent_id) as live:
        assert [m.content for m in (await live.context(session)).messages] == ["a", "b", "c"]
    await harness.sessions.rewind("t1", session, 1)
    await harness.say(session, "d")
    await harness.say(session, "e")
    async with harness.pool.acquire("t1", agent_id) as live:
        assert [m.content for m in (await live.context(session)).messages] == ["a", "d", "e"]


async def test_a_changed_agent_is_re_resolved_on_its_next_run(harness: Harness) -> None:
    agent_id = await harness.pooled()
    await harness.agents.update("t1", agent_id, AgentSpec(state=AgentState.DISABLED), ["state"], "")
    async with harness.pool.acquire("t1", agent_id) as live:
        assert live.agent.spec.state is AgentState.DISABLED


async def test_a_deleted_agent_leaves_the_pool_at_once(harness: Harness) -> None:
    live_one, hibernated = await harness.pooled(), await harness.pooled()
    async with harness.pool.acquire("t1", live_one):
        pass
    await harness.agents.delete("t1", live_one, "")
    await harness.agents.delete("t1", hibernated, "")
    # The rows went with the agents: not listed, not counted, NOT_FOUND.
    assert await harness.repo.find("t1", live_one) is None
    assert await harness.repo.find("t1", hibernated) is None
    stats = await harness.service.stats("t1")
    assert (stats.live, stats.hibernated) == (0, 0)
    with pytest.raises(NotFound):
        await harness.service.get("t1", live_one)
    # A run of the deleted agent fails NOT_FOUND and frees its live slot.
    assert harness.pool.is_live("t1", live_one)
    with pytest.raises(NotFound):
        async with harness.pool.acquire("t1", live_one):
            pass
    assert not harness.pool.is_live("t1", live_one)


async def test_many_concurrent_runs_never_overshoot_capacity_nor_lose_a_wake_up(
    database: Database, tmp_path: Path
) -> None:
    capacity = 3
    h = build(database, tmp_path, max_agents=capacity, idle_s=60, admission_timeout_s=20)
    try:
        agent_ids = [await h.pooled() for _ in range(8)]
        peak = 0

        async def run(i: int) -> None:
            nonlocal peak
            agent_id = agent_ids[i % len(agent_ids)]
            async with h.pool.acquire("t1", agent_id) as live:
                assert live.pooled
                peak = max(peak, len(h.pool._live) + h.pool._reserved)
                assert len(h.pool._live) <= capacity
                await asyncio.sleep(0.001 * (i % 5))

        # 120 runs over 8 agents with room for 3: every run gets in (no
        # wake-up is lost: a lost one would sit out the 20 s timeout).
        await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(120))), 15)
        assert peak <= capacity
        counters = h.pool.counters("t1")
        assert counters.admission_timeouts == 0
        assert counters.hits + counters.cold_starts == 120
        assert len(h.pool._live) <= capacity
        assert all(live.active_runs == 0 for live in h.pool._live.values())
        stats = await h.service.stats("t1")
        assert stats.live == len(h.pool._live)
        assert stats.live + stats.hibernated == len(agent_ids)
    finally:
        await h.pool.close()


async def test_service_rules_and_bad_input(harness: Harness) -> None:
    inline = await harness.service.create("t1", "", AgentSpec(display_name="inline"))
    assert inline.state is PoolAgentState.LIVE and inline.agent_id.startswith("agt_")
    with pytest.raises(AlreadyExists):
        await harness.service.create("t1", inline.agent_id, None)
    with pytest.raises(NotFound):
        await harness.service.create("t2", inline.agent_id, None)  # another tenant's agent
    with pytest.raises(NotFound):
        await harness.service.get("t2", inline.agent_id)
    with pytest.raises(InvalidArgument) as bad:
        await harness.service.get("t1", "Not An Id")
    assert bad.value.field == "agent_id"
    for text in ["state=SLEEPY", "labels.a=b", "nonsense"]:
        with pytest.raises(InvalidArgument) as bad:
            await harness.service.list("t1", 0, "", text)
        assert bad.value.field == "filter"
    live = await harness.service.list("t1", 0, "", "state=LIVE")
    assert [v.agent_id for v in live.items] == [inline.agent_id]
    assert (await harness.service.list("t1", 0, "", "state=HIBERNATED")).items == []
    await harness.service.remove("t1", inline.agent_id)
    assert not harness.pool.is_live("t1", inline.agent_id)
    with pytest.raises(NotFound):
        await harness.service.get("t1", inline.agent_id)
    with pytest.raises(NotFound):
        await harness.service.remove("t1", inline.agent_id)
    # The agent itself stays, and runs outside the pool.
    assert (await harness.agents.get("t1", inline.agent_id)).id == inline.agent_id


async def test_create_is_all_or_nothing_when_the_pool_is_busy(harness: Harness) -> None:
    a, b = await harness.pooled(), await harness.pooled()
    c = (await harness.agents.create("t1", AgentSpec(display_name="c"))).id
    async with harness.pool.acquire("t1", a), harness.pool.acquire("t1", b):
        with pytest.raises(ResourceExhausted):
            await harness.service.create("t1", c, None)
    assert await harness.repo.find("t1", c) is None


async def test_removal_drains_active_runs_first(harness: Harness) -> None:
    agent_id = await harness.pooled()
    order: list[str] = []

    async def run() -> None:
        async with harness.pool.acquire("t1", agent_id):
            await asyncio.sleep(0.2)
            order.append("run ended")

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    draining = asyncio.create_task(harness.service.remove("t1", agent_id))
    await asyncio.sleep(0.05)
    assert (await harness.service.get("t1", agent_id)).state is PoolAgentState.DRAINING
    with pytest.raises(FailedPrecondition):
        await harness.service.resume("t1", agent_id)
    await draining
    order.append("removed")
    await task
    assert order == ["run ended", "removed"]


def test_percentiles_of_stats() -> None:
    from aster.server.pools.service import _percentile

    samples = sorted(float(i) for i in range(1, 101))
    assert _percentile([], 50) == 0.0
    assert _percentile([7.0], 99) == 7.0
    assert _percentile(samples, 50) == pytest.approx(50.5)
    assert _percentile(samples, 99) == pytest.approx(99.01)
    assert dataclasses.is_dataclass(PoolSettings())


async def test_two_replicas_share_membership_and_hand_over_the_live_agent(
    database: Database, tmp_path: Path
) -> None:
    a = build(database, tmp_path, max_agents=5, idle_s=60, admission_timeout_s=1)
    b = build(database, tmp_path, max_agents=5, idle_s=60, admission_timeout_s=1)
    try:
        agent_id = await a.pooled()  # warmed on replica a
        assert (await a.repo.get("t1", agent_id)).replica == a.pool.replica
        # Replica b sees the membership, and its first run is a cold start there.
        async with b.pool.acquire("t1", agent_id) as live:
            assert live.pooled
        assert b.pool.counters("t1").cold_starts == 1
        assert (await b.repo.get("t1", agent_id)).replica == b.pool.replica
        # a no longer holds it: its next sweep drops its copy without writing,
        # and a's shutdown does not hibernate b's live agent.
        await a.pool.sweep()
        assert not a.pool.is_live("t1", agent_id) and b.pool.is_live("t1", agent_id)
        await a.pool.close()
        assert (await b.service.get("t1", agent_id)).state is PoolAgentState.LIVE
        assert (await a.service.stats("t1")).live == 1
    finally:
        await a.pool.close()
        await b.pool.close()
    assert (await b.repo.get("t1", agent_id)).state is PoolAgentState.HIBERNATED


async def test_a_crashed_replicas_agents_read_as_hibernated(
    database: Database, tmp_path: Path
) -> None:
    crashed = build(database, tmp_path, max_agents=5, idle_s=0.05, admission_timeout_s=1)
    agent_id = await crashed.pooled()
    assert crashed.pool.hold_s < 2
    # The replica dies without hibernating anything: its hold lapses.
    await asyncio.sleep(crashed.pool.hold_s + 0.1)
    survivor = build(database, tmp_path, max_agents=5, idle_s=60, admission_timeout_s=1)
    try:
        assert (await survivor.service.get("t1", agent_id)).state is PoolAgentState.HIBERNATED
        assert (await survivor.service.stats("t1")).hibernated == 1
        async with survivor.pool.acquire("t1", agent_id) as live:
            assert live.pooled
        assert (await survivor.service.get("t1", agent_id)).state is PoolAgentState.LIVE
    finally:
        await survivor.pool.close()


async def test_a_warm_up_that_leaves_an_idle_agent_wakes_a_waiting_run(
    database: Database, tmp_path: Path
) -> None:
    h = build(database, tmp_path, max_agents=1, idle_s=60, admission_timeout_s=5)
    try:
        busy, resumed, waiting = await h.pooled(), await h.pooled(), await h.pooled()
        await h.pool.close()  # all hibernated
        loop = asyncio.get_running_loop()

        async def hold_busy() -> None:
            async with h.pool.acquire("t1", busy):
                await asyncio.sleep(0.3)

        holder = asyncio.create_task(hold_busy())
        await asyncio.sleep(0.05)
        # Both wait for the busy agent; the warm-up gets its slot first and
        # leaves `resumed` live and idle, which the waiting run may evict.
        warm = asyncio.create_task(h.service.resume("t1", resumed))
        await asyncio.sleep(0.01)
        started = loop.time()
        async with h.pool.acquire("t1", waiting) as live:
            assert live.pooled
        assert loop.time() - started < 2, "the waiting run was not woken"
        await warm
        await holder
    finally:
        await h.pool.close()


async def test_a_run_racing_the_hibernation_of_its_agent_finds_it_live(
    database: Database, tmp_path: Path
) -> None:
    h = build(database, tmp_path, max_agents=2, idle_s=60, admission_timeout_s=5)
    try:
        first, other = await h.pooled(), await h.pooled()
        async with h.pool.acquire("t1", other):
            pass  # `first` is the least recently used
        hibernate = h.repo.hibernate

        async def slow_hibernate(tenant: str, agent_id: str, *args: Any, **kwargs: Any) -> bool:
            if agent_id == first:
                await asyncio.sleep(0.4)  # the eviction's write is still in flight
            return await hibernate(tenant, agent_id, *args, **kwargs)

        h.repo.hibernate = slow_hibernate  # type: ignore[method-assign]
        third = asyncio.create_task(h.pooled())  # evicts `first`
        await asyncio.sleep(0.1)
        async with h.pool.acquire("t1", first) as live:  # races the write; evicts `other`
            assert live.pooled
        await third
        await asyncio.sleep(0.5)
        # Whatever is live here, the table says so too (and the stats agree).
        for agent_id in (first, other, third.result()):
            state = (await h.repo.get("t1", agent_id)).state
            live_here = h.pool.is_live("t1", agent_id)
            assert (state is PoolAgentState.LIVE) == live_here, (agent_id, state, live_here)
        stats = await h.service.stats("t1")
        assert (stats.live, stats.hibernated) == (2, 1)
    finally:
        await h.pool.close()
