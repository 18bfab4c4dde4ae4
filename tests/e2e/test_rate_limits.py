"""Rate limits and quotas through the real server and Envoy."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aster.v1 import agent_pb2, agent_pb2_grpc
from tests.auth_helpers import Signer, auth_env, cli_key
from tests.chat_helpers import scripted_agent, words
from tests.processes import Ports, start_edge, start_server
from tests.unit.limits.conftest import delete_prefix

Code = grpc.StatusCode


def retry_info(err: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no RetryInfo detail")


async def burst(target: str, key: str, count: int) -> list[grpc.StatusCode]:
    codes = []
    async with grpc.aio.insecure_channel(target) as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        for _ in range(count):
            try:
                await agents.ListAgents(
                    agent_pb2.ListAgentsRequest(), metadata=(("x-api-key", key),)
                )
                codes.append(Code.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
                if err.code() == Code.RESOURCE_EXHAUSTED:
                    delay = retry_info(err).retry_delay
                    assert 0 < delay.ToTimedelta().total_seconds() <= 10
    return codes


async def test_a_burst_is_limited_over_grpc_and_rest(tmp_path: Path) -> None:
    env = auth_env(
        Signer().write_jwks(tmp_path / "jwks.json"),
        ASTER_RATE_LIMIT_RPS="0.5",
        ASTER_RATE_LIMIT_BURST="3",
    )
    ports = Ports()
    key = cli_key(ports, tmp_path, "t-rate", "agents.read", **env)
    server = start_server(ports, tmp_path, **env)
    try:
        codes = await burst(f"127.0.0.1:{ports.grpc}", key, 6)
        assert codes[:3] == [Code.OK] * 3
        assert codes[3:] == [Code.RESOURCE_EXHAUSTED] * 3
        edge = start_edge(ports, tmp_path, **env)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.http}") as http:
                response = await http.get("/v1/agents", headers={"x-api-key": key})
            assert response.status_code == 429
            body = response.json()
            assert body["code"] == 8
            kinds = {d["@type"] for d in body["details"]}
            assert "type.googleapis.com/google.rpc.RetryInfo" in kinds
        finally:
            edge.stop()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{ports.metrics}/metrics")).text
        assert 'aster_rate_limited_total{bucket="tenant"}' in metrics
    finally:
        assert server.stop() == 0


@pytest.mark.redis
async def test_two_replicas_share_one_limit(tmp_path: Path, redis_url: str) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    env = auth_env(
        Signer().write_jwks(tmp_path / "jwks.json"),
        ASTER_RATE_LIMIT_RPS="0.1",
        ASTER_RATE_LIMIT_BURST="5",
        ASTER_REDIS_URL=redis_url,
        ASTER_DATABASE_URL=database,
    )
    first, second = Ports(), Ports()
    key = cli_key(first, tmp_path / "a", f"t-shared-{first.grpc}", "agents.read", **env)
    servers = [
        start_server(first, tmp_path / "a", **env),
        start_server(second, tmp_path / "b", **env),
    ]
    try:
        codes: list[grpc.StatusCode] = []
        for _ in range(6):
            for ports in (first, second):
                codes += await burst(f"127.0.0.1:{ports.grpc}", key, 1)
        assert codes.count(Code.OK) == 5, codes
        assert codes.count(Code.RESOURCE_EXHAUSTED) == 7
    finally:
        for server in servers:
            assert server.stop() == 0


async def test_quotas_name_themselves(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_QUOTA_MAX_AGENTS="2")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            for _ in range(2):
                await agents.CreateAgent(
                    agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="q"))
                )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agents.CreateAgent(
                    agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="q"))
                )
            assert caught.value.code() == Code.RESOURCE_EXHAUSTED
            assert "max_agents" in (caught.value.details() or "")
    finally:
        assert server.stop() == 0


async def chat(target: str, agent_id: str) -> list[str]:
    """One chat to its end; the kinds of its events."""
    async with grpc.aio.insecure_channel(target) as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ChatRequest(agent_id=agent_id, message="go")
        return [event.WhichOneof("event") async for event in agents.Chat(request)]


async def assert_token_quota_reached(target: str, agent_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat(target, agent_id)
    assert caught.value.code() == Code.RESOURCE_EXHAUSTED
    details = caught.value.details() or ""
    assert "max_tokens_per_day=50" in details, details
    assert "ASTER_QUOTA_MAX_TOKENS_PER_DAY" in details, details


async def test_the_daily_token_quota_in_process(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_QUOTA_MAX_TOKENS_PER_DAY="50")
    target = f"127.0.0.1:{ports.grpc}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            agent = await scripted_agent(
                agent_pb2_grpc.AgentServiceStub(channel), script=[{"text": words(30)}]
            )
        # About 31-45 tokens each (30 words out): the first two fit under 50
        # (the second starts at ~31 used), the third does not.
        assert (await chat(target, agent.id))[-1] == "run_finished"
        assert (await chat(target, agent.id))[-1] == "run_finished"
        await assert_token_quota_reached(target, agent.id)
    finally:
        assert server.stop() == 0


@pytest.mark.redis
async def test_replicas_share_the_daily_token_quota_through_redis(
    tmp_path: Path, redis_url: str
) -> None:
    # Tenant "default" (auth off): start from a clean count, leave none.
    delete_prefix(redis_url, "aster:quota:tokens:")
    env = {
        "ASTER_QUOTA_MAX_TOKENS_PER_DAY": "50",
        "ASTER_REDIS_URL": redis_url,
        "ASTER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
    }
    first, second = Ports(), Ports()
    servers = [start_server(first, tmp_path / "a", **env)]
    servers.append(start_server(second, tmp_path / "b", **env))
    a, b = f"127.0.0.1:{first.grpc}", f"127.0.0.1:{second.grpc}"
    try:
        async with grpc.aio.insecure_channel(a) as channel:
            agent = await scripted_agent(
                agent_pb2_grpc.AgentServiceStub(channel), script=[{"text": words(30)}]
            )
        # B reads the day's count first, then A's run is charged to it: B
        # sees A's tokens only through the shared count (its own process
        # has charged just its own run, under the quota).
        assert (await chat(b, agent.id))[-1] == "run_finished"
        assert (await chat(a, agent.id))[-1] == "run_finished"
        await assert_token_quota_reached(b, agent.id)
        await assert_token_quota_reached(a, agent.id)
    finally:
        for server in servers:
            assert server.stop() == 0
        delete_prefix(redis_url, "aster:quota:tokens:")
