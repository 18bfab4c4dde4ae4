"""PoolService through the real server and Envoy: hibernation and resume with
the conversation intact, capacity pressure, admission timeout, figures,
tenant isolation and bad input. Each scenario gets its own server, started
with the pool settings it needs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    pool_pb2,
    pool_pb2_grpc,
    run_pb2,
    session_pb2,
    session_pb2_grpc,
)
from tests.auth_helpers import cli_key
from tests.chat_helpers import event_from_json, scripted_agent, sse_events, text_of
from tests.conftest import DatabaseFor
from tests.processes import Ports, Process, start_edge, start_server
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode
LIVE, HIBERNATED = pool_pb2.POOL_AGENT_STATE_LIVE, pool_pb2.POOL_AGENT_STATE_HIBERNATED
COMPLETED, FAILED = run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED
TURNS = [{"text": "first answer"}, {"text": "second answer"}, {"text": "third answer"}]
Metadata = tuple[tuple[str, str], ...]


@dataclass
class PoolStack:
    """A server (and edge) with particular pool settings, and API keys by tenant."""

    ports: Ports
    server: Process
    edge: Process
    keys: dict[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def md(self, tenant: str = "") -> Metadata:
        return (("x-api-key", self.keys[tenant]),) if tenant else ()

    def headers(self, tenant: str = "") -> dict[str, str]:
        return {"x-api-key": self.keys[tenant]} if tenant else {}


def _start(data_dir: Path, tenants: list[str], **env: str) -> PoolStack:
    ports = Ports()
    keys: dict[str, str] = {}
    if tenants:
        env["ASTER_AUTH_MODE"] = "api_key"
        env["ASTER_RATE_LIMIT_RPS"] = env["ASTER_RATE_LIMIT_BURST"] = "1000"
        keys = {t: cli_key(ports, data_dir, t, "admin", **env) for t in tenants}
    server = start_server(ports, data_dir, **env)
    try:
        edge = start_edge(ports, data_dir, **env)
    except BaseException:
        server.stop()
        raise
    return PoolStack(ports, server, edge, keys)


def _stop(stack: PoolStack) -> None:
    stack.edge.stop()
    assert stack.server.stop() == 0, stack.server.log_tail()


@pytest.fixture(scope="module")
def idle_stack(
    tmp_path_factory: pytest.TempPathFactory, database_for: DatabaseFor
) -> Iterator[PoolStack]:
    """Agents hibernate after one idle second."""
    stack = _start(
        tmp_path_factory.mktemp("pool-idle"),
        [],
        ASTER_POOL_IDLE_S="1",
        ASTER_POOL_MAX_AGENTS="10",
        **database_for("pool_idle"),
    )
    yield stack
    _stop(stack)


@pytest.fixture(scope="module")
def tight_stack(
    tmp_path_factory: pytest.TempPathFactory, database_for: DatabaseFor
) -> Iterator[PoolStack]:
    """Two live agents at most, with API keys of three tenants."""
    stack = _start(
        tmp_path_factory.mktemp("pool-tight"),
        ["pool-a", "pool-b", "pool-c"],
        ASTER_POOL_MAX_AGENTS="2",
        ASTER_POOL_IDLE_S="600",
        ASTER_POOL_ADMISSION_TIMEOUT_S="1",
        **database_for("pool_tight"),
    )
    yield stack
    _stop(stack)


@pytest.fixture(scope="module")
def single_stack(
    tmp_path_factory: pytest.TempPathFactory, database_for: DatabaseFor
) -> Iterator[PoolStack]:
    """One live agent at most; runs wait one second for it."""
    stack = _start(
        tmp_path_factory.mktemp("pool-single"),
        [],
        ASTER_POOL_MAX_AGENTS="1",
        ASTER_POOL_IDLE_S="600",
        ASTER_POOL_ADMISSION_TIMEOUT_S="1",
        **database_for("pool_single"),
    )
    yield stack
    _stop(stack)


@dataclass
class Stubs:
    agents: agent_pb2_grpc.AgentServiceAsyncStub
    pools: pool_pb2_grpc.PoolServiceAsyncStub
    sessions: session_pb2_grpc.SessionServiceAsyncStub


@pytest.fixture
async def idle(idle_stack: PoolStack) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(idle_stack.target) as channel:
        yield _stubs(channel)


@pytest.fixture
async def tight(tight_stack: PoolStack) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(tight_stack.target) as channel:
        yield _stubs(channel)


@pytest.fixture
async def single(single_stack: PoolStack) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(single_stack.target) as channel:
        yield _stubs(channel)


def _stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(
        agent_pb2_grpc.AgentServiceStub(channel),
        pool_pb2_grpc.PoolServiceStub(channel),
        session_pb2_grpc.SessionServiceStub(channel),
    )


async def chat(
    agents: agent_pb2_grpc.AgentServiceAsyncStub,
    agent_id: str,
    message: str,
    session_id: str = "",
    md: Metadata = (),
) -> list[run_pb2.ChatEvent]:
    request = agent_pb2.ChatRequest(agent_id=agent_id, message=message, session_id=session_id)
    return [e async for e in agents.Chat(request, metadata=md)]


async def pooled_agent(
    s: Stubs, md: Metadata = (), script: list[dict[str, Any]] | None = None, delay_ms: float = 0
) -> str:
    """A scripted agent added to the pool (and warmed)."""
    params: dict[str, Any] = {"token_delay_ms": delay_ms, "script": script or TURNS}
    agent = agent_pb2.Agent(
        display_name="pooled",
        model=agent_pb2.ModelConfig(provider="scripted"),
    )
    agent.model.params.update(params)
    created = await s.pools.CreatePooledAgent(
        pool_pb2.CreatePooledAgentRequest(agent=agent), metadata=md
    )
    assert created.state == LIVE
    return created.agent_id


async def stats(s: Stubs, md: Metadata = ()) -> pool_pb2.PoolStats:
    return await s.pools.GetPoolStats(pool_pb2.GetPoolStatsRequest(), metadata=md)


async def wait_state(s: Stubs, agent_id: str, state: int, limit_s: float = 15) -> None:
    async with asyncio.timeout(limit_s):
        while True:
            got = await s.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id=agent_id))
            if got.state == state:
                return
            await asyncio.sleep(0.1)


# -- hibernation and resume ------------------------------------------------------


async def test_a_hibernated_agent_resumes_with_its_conversation_intact(idle: Stubs) -> None:
    agent_id = await pooled_agent(idle)
    first = await chat(idle.agents, agent_id, "one")
    session_id = first[0].session_id
    assert text_of(first) == "first answer"
    assert text_of(await chat(idle.agents, agent_id, "two", session_id)) == "second answer"
    before = await stats(idle)
    await wait_state(idle, agent_id, HIBERNATED)
    asleep = await idle.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id=agent_id))
    assert asleep.HasField("last_use_time") and asleep.active_runs == 0
    # The third turn: the model sees both earlier turns (the scripted reply
    # is picked by how many assistant messages the request holds).
    third = await chat(idle.agents, agent_id, "three", session_id)
    assert third[-1].run_finished.status == COMPLETED
    assert text_of(third) == "third answer"
    after = await stats(idle)
    assert after.cold_starts == before.cold_starts + 1
    assert after.resume_latency_p50_ms > 0
    messages = await idle.sessions.ListMessages(
        session_pb2.ListMessagesRequest(session_id=session_id)
    )
    assert [m.content for m in messages.messages] == [
        "one",
        "first answer",
        "two",
        "second answer",
        "three",
        "third answer",
    ]


async def test_resume_warms_a_hibernated_agent_over_rest(
    idle_stack: PoolStack, idle: Stubs
) -> None:
    agent_id = await pooled_agent(idle)
    async with httpx.AsyncClient(base_url=idle_stack.base, timeout=20) as http:
        events = [
            event_from_json(d)
            async for d in sse_events(
                http, "POST", f"/v1/agents/{agent_id}/chat", json={"message": "one"}
            )
        ]
        session_id = events[0].session_id
        await wait_state(idle, agent_id, HIBERNATED)
        reply = await http.post(f"/v1/pool/agents/{agent_id}/resume", json={})
        assert reply.status_code == 200, reply.text
        assert reply.json()["state"] == "POOL_AGENT_STATE_LIVE"
        hits = int((await http.get("/v1/pool/stats")).json()["hits"])
        events = [
            event_from_json(d)
            async for d in sse_events(
                http,
                "POST",
                f"/v1/agents/{agent_id}/chat",
                json={"message": "two", "session_id": session_id},
            )
        ]
        assert text_of(events) == "second answer"
        assert int((await http.get("/v1/pool/stats")).json()["hits"]) == hits + 1


# -- capacity pressure and admission control ----------------------------------------


async def test_capacity_pressure_hibernates_the_least_recently_used(
    tight_stack: PoolStack, tight: Stubs
) -> None:
    md = tight_stack.md("pool-a")
    a, b = await pooled_agent(tight, md), await pooled_agent(tight, md)
    assert text_of(await chat(tight.agents, a, "hi", md=md)) == "first answer"  # b is now LRU
    before = await stats(tight, md)
    c = await pooled_agent(tight, md)
    after = await stats(tight, md)
    assert after.evictions == before.evictions + 1
    states = {
        agent_id: (
            await tight.pools.GetPoolAgent(
                pool_pb2.GetPoolAgentRequest(agent_id=agent_id), metadata=md
            )
        ).state
        for agent_id in (a, b, c)
    }
    assert states == {a: LIVE, b: HIBERNATED, c: LIVE}
    # b's next run is a cold start that evicts a (now the LRU).
    assert text_of(await chat(tight.agents, b, "back", md=md)) == "first answer"
    final = await stats(tight, md)
    assert final.cold_starts == after.cold_starts + 1
    assert final.evictions == after.evictions + 1
    listed = await tight.pools.ListPoolAgents(
        pool_pb2.ListPoolAgentsRequest(filter="state=HIBERNATED"), metadata=md
    )
    assert a in [p.agent_id for p in listed.agents]


async def test_admission_timeout_fails_the_run_with_resource_exhausted(
    single_stack: PoolStack, single: Stubs
) -> None:
    busy = await pooled_agent(single, script=[{"text": "slow " * 20}], delay_ms=200)
    other = await pooled_agent(single)  # evicts `busy`, which is idle
    long_run = asyncio.create_task(chat(single.agents, busy, "take your time"))
    await wait_active(single, busy)
    started = asyncio.get_running_loop().time()
    events = await chat(single.agents, other, "me too")
    waited = asyncio.get_running_loop().time() - started
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == "RESOURCE_EXHAUSTED"
    assert "ASTER_POOL_MAX_AGENTS" in error.message
    assert events[-1].run_finished.status == FAILED
    assert 0.9 <= waited < 3.5
    # A background run ends FAILED with the same error.
    run = await single.agents.SendMessage(
        agent_pb2.SendMessageRequest(agent_id=other, message="later")
    )
    done = await wait_run(single.agents, run.id)
    assert done.status == FAILED and "ASTER_POOL_MAX_AGENTS" in done.error
    finished = await long_run
    assert finished[-1].run_finished.status == COMPLETED
    figures = await stats(single)
    assert figures.admission_timeouts == 2
    # With the slow run over, the other agent gets the slot.
    assert text_of(await chat(single.agents, other, "now")) == "first answer"


async def test_admission_timeout_reaches_a_rest_chat(
    single_stack: PoolStack, single: Stubs
) -> None:
    busy = await pooled_agent(single, script=[{"text": "slow " * 15}], delay_ms=200)
    other = await pooled_agent(single)
    long_run = asyncio.create_task(chat(single.agents, busy, "hold it"))
    await wait_active(single, busy)
    async with httpx.AsyncClient(base_url=single_stack.base, timeout=20) as http:
        events = [
            event_from_json(d)
            async for d in sse_events(
                http, "POST", f"/v1/agents/{other}/chat", json={"message": "hi"}
            )
        ]
    assert [e.error.code for e in events if e.WhichOneof("event") == "error"] == [
        "RESOURCE_EXHAUSTED"
    ]
    await long_run


async def wait_active(s: Stubs, agent_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            got = await s.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id=agent_id))
            if got.active_runs and got.state == LIVE:
                return
            await asyncio.sleep(0.05)


async def wait_run(agents: agent_pb2_grpc.AgentServiceAsyncStub, run_id: str) -> run_pb2.Run:
    async with asyncio.timeout(20):
        while True:
            run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
            if run.status in (COMPLETED, FAILED, run_pb2.RUN_STATUS_CANCELLED):
                return run
            await asyncio.sleep(0.05)


# -- figures, listing, removal ------------------------------------------------------


async def test_stats_figures_are_consistent_over_rest(tight_stack: PoolStack, tight: Stubs) -> None:
    md, headers = tight_stack.md("pool-c"), tight_stack.headers("pool-c")
    agents = [await pooled_agent(tight, md) for _ in range(3)]
    async with httpx.AsyncClient(base_url=tight_stack.base, headers=headers, timeout=20) as http:
        figures = (await http.get("/v1/pool/stats")).json()
        assert figures["capacity"] == 2
        assert (figures["live"], figures["hibernated"]) == (2, 1)
        assert (int(figures["evictions"]), int(figures["cold_starts"])) == (1, 0)
        listed = (await http.get("/v1/pool/agents")).json()["agents"]
        assert sorted(a["agent_id"] for a in listed) == sorted(agents)
        by_state = {a["agent_id"]: a["state"] for a in listed}
        assert by_state[agents[0]] == "POOL_AGENT_STATE_HIBERNATED"
        # A run of the hibernated one: a cold start and one more eviction.
        await chat(tight.agents, agents[0], "wake up", md=md)
        await chat(tight.agents, agents[0], "again", md=md)
        figures = (await http.get("/v1/pool/stats")).json()
        assert (figures["live"], figures["hibernated"]) == (2, 1)
        assert (int(figures["hits"]), int(figures["cold_starts"])) == (1, 1)
        assert int(figures["evictions"]) == 2
        assert figures["resume_latency_p99_ms"] >= figures["resume_latency_p50_ms"] > 0
        live = (await http.get("/v1/pool/agents", params={"filter": "state=LIVE"})).json()
        assert len(live["agents"]) == figures["live"]
        one = (await http.get("/v1/pool/agents", params={"page_size": 1})).json()
        assert len(one["agents"]) == 1 and one["next_page_token"]
        # Removal drains, then drops; the agent itself stays.
        assert (await http.delete(f"/v1/pool/agents/{agents[1]}")).status_code == 200
        assert (await http.get(f"/v1/pool/agents/{agents[1]}")).status_code == 404
        assert (await http.get(f"/v1/agents/{agents[1]}")).status_code == 200
        figures = (await http.get("/v1/pool/stats")).json()
        assert figures["live"] + figures["hibernated"] == 2
        # Deleting an agent takes it out of the pool at once.
        assert (await http.delete(f"/v1/agents/{agents[2]}")).status_code == 200
        assert (await http.get(f"/v1/pool/agents/{agents[2]}")).status_code == 404
        figures = (await http.get("/v1/pool/stats")).json()
        assert figures["live"] + figures["hibernated"] == 1
        listed = (await http.get("/v1/pool/agents")).json()["agents"]
        assert [a["agent_id"] for a in listed] == [agents[0]]


async def test_pooled_agents_are_tenant_scoped(tight_stack: PoolStack, tight: Stubs) -> None:
    mine, theirs = tight_stack.md("pool-a"), tight_stack.md("pool-b")
    agent_id = await pooled_agent(tight, mine)
    for call in (
        tight.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id=agent_id), metadata=theirs),
        tight.pools.ResumePoolAgent(
            pool_pb2.ResumePoolAgentRequest(agent_id=agent_id), metadata=theirs
        ),
        tight.pools.RemovePoolAgent(
            pool_pb2.RemovePoolAgentRequest(agent_id=agent_id), metadata=theirs
        ),
        # Pooling another tenant's agent: it does not exist for them.
        tight.pools.CreatePooledAgent(
            pool_pb2.CreatePooledAgentRequest(agent_id=agent_id), metadata=theirs
        ),
    ):
        await expect_error(call, Code.NOT_FOUND)
    listed = await tight.pools.ListPoolAgents(pool_pb2.ListPoolAgentsRequest(), metadata=theirs)
    assert agent_id not in [a.agent_id for a in listed.agents]
    async with httpx.AsyncClient(base_url=tight_stack.base, timeout=20) as http:
        other = tight_stack.headers("pool-b")
        assert (await http.get(f"/v1/pool/agents/{agent_id}", headers=other)).status_code == 404
        assert (await http.get("/v1/pool/stats")).status_code == 401
        mine_h = tight_stack.headers("pool-a")
        assert (await http.get(f"/v1/pool/agents/{agent_id}", headers=mine_h)).status_code == 200


async def test_bad_input(tight_stack: PoolStack, tight: Stubs) -> None:
    md = tight_stack.md("pool-a")
    err = await expect_error(
        tight.pools.CreatePooledAgent(pool_pb2.CreatePooledAgentRequest(), metadata=md),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "agent_id"
    err = await expect_error(
        tight.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id="Bad Id!"), metadata=md),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "agent_id"
    await expect_error(
        tight.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id="agt_nope"), metadata=md),
        Code.NOT_FOUND,
    )
    for text in ("state=ASLEEP", "labels.team=x", "whatever"):
        err = await expect_error(
            tight.pools.ListPoolAgents(pool_pb2.ListPoolAgentsRequest(filter=text), metadata=md),
            Code.INVALID_ARGUMENT,
        )
        assert error_info(err).metadata["field"] == "filter"
    await expect_error(
        tight.pools.ListPoolAgents(pool_pb2.ListPoolAgentsRequest(page_size=-1), metadata=md),
        Code.INVALID_ARGUMENT,
    )
    await expect_error(
        tight.pools.ListPoolAgents(
            pool_pb2.ListPoolAgentsRequest(page_token="garbage"), metadata=md
        ),
        Code.INVALID_ARGUMENT,
    )
    # An invalid inline agent is refused as CreateAgent would.
    err = await expect_error(
        tight.pools.CreatePooledAgent(
            pool_pb2.CreatePooledAgentRequest(
                agent=agent_pb2.Agent(
                    display_name="x", model=agent_pb2.ModelConfig(provider="nope")
                )
            ),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    agent_id = await pooled_agent(tight, md)
    await expect_error(
        tight.pools.CreatePooledAgent(
            pool_pb2.CreatePooledAgentRequest(agent_id=agent_id), metadata=md
        ),
        Code.ALREADY_EXISTS,
    )
    headers = {**tight_stack.headers("pool-a"), "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=tight_stack.base, headers=headers, timeout=20) as http:
        reply = await http.post("/v1/pool/agents", content=b"{not json")
        assert reply.status_code == 400
        reply = await http.post("/v1/pool/agents", json={"agent_id": 42})
        assert reply.status_code == 400
        reply = await http.get("/v1/pool/agents", params={"filter": "state=NAPPING"})
        assert reply.status_code == 400 and "filter" in reply.text
        reply = await http.post("/v1/pool/agents/agt_nope/resume", json={})
        assert reply.status_code == 404
        reply = await http.delete("/v1/pool/agents/agt_nope")
        assert reply.status_code == 404


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_pool_metrics_are_exported(idle_stack: PoolStack, idle: Stubs) -> None:
    async with httpx.AsyncClient(base_url=idle_stack.base, timeout=20) as http:
        before = (await http.get("/metrics")).text
        agent_id = await pooled_agent(idle)
        await chat(idle.agents, agent_id, "hi")
        during = (await http.get("/metrics")).text
        await wait_state(idle, agent_id, HIBERNATED)
        await chat(idle.agents, agent_id, "again")
        after = (await http.get("/metrics")).text
    assert metric(during, "aster_pool_capacity") == 10
    assert metric(during, "aster_pool_live_agents") >= 1
    assert metric(during, "aster_pool_hits_total") == metric(before, "aster_pool_hits_total") + 1
    assert (
        metric(after, "aster_pool_cold_starts_total")
        == metric(during, "aster_pool_cold_starts_total") + 1
    )
    assert metric(after, 'aster_pool_hibernations_total{reason="idle"}') >= 1
    assert metric(after, "aster_pool_resume_seconds_count") >= 2


async def test_a_plain_agent_runs_outside_the_pool(idle: Stubs) -> None:
    before = await stats(idle)
    agent = await scripted_agent(idle.agents, script=[{"text": "plain"}])
    assert text_of(await chat(idle.agents, agent.id, "hi")) == "plain"
    after = await stats(idle)
    assert (after.hits, after.cold_starts) == (before.hits, before.cold_starts)
    await expect_error(
        idle.pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id=agent.id)), Code.NOT_FOUND
    )
