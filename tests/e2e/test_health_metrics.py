"""Readiness and liveness, and Aster's own metrics moving."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aster.v1 import agent_pb2, agent_pb2_grpc
from tests.chat_helpers import scripted_agent
from tests.conftest import IN_CI, Stack
from tests.processes import Ports, free_port, start_edge, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(channel: grpc.aio.Channel, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return int(reply.status)


async def wait_status(
    channel: grpc.aio.Channel, service: str, wanted: int, within_s: float = 10
) -> None:
    async with asyncio.timeout(within_s):
        while await status(channel, service) != wanted:  # noqa: ASYNC110 - polls a remote server
            await asyncio.sleep(0.2)


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed; CI=true requires it")
        pytest.skip("redis-server is not installed")
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
    )


@pytest.mark.redis
async def test_readiness_follows_redis_and_liveness_does_not(tmp_path: Path) -> None:
    redis_port = free_port()
    redis = start_redis(redis_port, tmp_path)
    await asyncio.sleep(0.5)
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0")
    edge = start_edge(ports, tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            assert await status(channel, "aster.liveness") == SERVING
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.http}") as http:
                health = (await http.get("/health")).json()
                assert health["checks"]["redis"] == "ok"
                redis.terminate()
                redis.wait(10)
                await wait_status(channel, "", NOT_SERVING)
                await wait_status(channel, "aster.v1.AgentService", NOT_SERVING)
                assert await status(channel, "aster.liveness") == SERVING
                down = await http.get("/health")
                assert down.status_code == 503
                assert "redis" in down.json()["message"]
                redis = start_redis(redis_port, tmp_path)
                await wait_status(channel, "", SERVING, within_s=15)
                assert (await http.get("/health")).status_code == 200
    finally:
        edge.stop()
        assert server.stop() == 0
        redis.terminate()
        redis.wait(10)


async def test_aster_metrics_move(stack: Stack, channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    script = [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}}]},
        {"text": "Two."},
    ]
    agent = await scripted_agent(agents, script=script, tools=["calculator"])

    async def scrape() -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{stack.http_base}/metrics")).text

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    before = await scrape()
    events = [e async for e in agents.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="1+1"))]
    assert events[-1].run_finished.status == 3
    after = await scrape()
    for series, grew_by in [
        ('aster_runs_total{status="COMPLETED"}', 1),
        ('aster_tool_calls_total{outcome="ok"}', 1),
        (
            'grpc_server_handled_total{grpc_code="OK",grpc_method="Chat",grpc_service="aster.v1.AgentService",grpc_type="SERVER_STREAMING"}',
            1,
        ),
        (
            'grpc_server_msg_sent_total{grpc_method="Chat",grpc_service="aster.v1.AgentService",grpc_type="SERVER_STREAMING"}',
            len(events),
        ),
    ]:
        assert value(after, series) - value(before, series) == grew_by, series
    assert value(after, 'aster_tokens_total{direction="output"}') > value(
        before, 'aster_tokens_total{direction="output"}'
    )
    assert value(after, "aster_time_to_first_token_seconds_count") > value(
        before, "aster_time_to_first_token_seconds_count"
    )
    assert "aster_active_streams" in after
