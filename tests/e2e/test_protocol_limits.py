"""Protocol limits of the server: unary deadline, concurrent RPCs, keepalive
enforcement, production mode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from aster.v1 import agent_pb2, agent_pb2_grpc
from tests.auth_helpers import Signer, auth_env, cli_key
from tests.chat_helpers import scripted_agent, words
from tests.processes import Ports, stack_env, start_server

Code = grpc.StatusCode
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def test_unary_calls_have_a_server_side_ceiling(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_MAX_UNARY_DEADLINE_S="1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            agent = await scripted_agent(agents, script=[{"text": words(100)}], delay_ms=50)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agents.RunAgent(agent_pb2.RunAgentRequest(agent_id=agent.id, message="go"))
            assert caught.value.code() == Code.DEADLINE_EXCEEDED
            assert "ASTER_MAX_UNARY_DEADLINE_S" in (caught.value.details() or "")
            runs = await agents.ListRuns(agent_pb2.ListRunsRequest(agent_id=agent.id))
            for _ in range(50):
                run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=runs.runs[0].id))
                if run.status == 5:  # RUN_STATUS_CANCELLED
                    break
                await asyncio.sleep(0.1)
            assert run.status == 5
    finally:
        assert server.stop() == 0


async def test_too_many_concurrent_rpcs_are_refused(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_MAX_CONCURRENT_RPCS="3")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            agent = await scripted_agent(agents, script=[{"text": words(200)}], delay_ms=50)
            streams = [
                agents.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="go"))
                for _ in range(3)
            ]
            for stream in streams:
                await stream.read()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await agents.GetAgent(agent_pb2.GetAgentRequest(id=agent.id))
            assert caught.value.code() == Code.RESOURCE_EXHAUSTED
            for stream in streams:
                stream.cancel()
            await asyncio.sleep(0.5)
            assert (await agents.GetAgent(agent_pb2.GetAgentRequest(id=agent.id))).id == agent.id
    finally:
        assert server.stop() == 0


async def test_a_client_pinging_too_often_gets_goaway(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path)
    pushy = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}", options=pushy) as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            # A stream that stays quiet: the first word comes after a minute,
            # so every ping is a ping without data.
            agent = await scripted_agent(agents, script=[{"text": "late"}], delay_ms=60_000)
            stream = agents.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="go"))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async with asyncio.timeout(15):
                    while await stream.read() is not grpc.aio.EOF:
                        pass
            assert caught.value.code() == Code.UNAVAILABLE
            assert caught.value.details() == "Too many pings"
    finally:
        assert server.stop() == 0


def test_production_refuses_auth_off(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "serve"],
        env=stack_env(Ports(), tmp_path, ASTER_MODE="production"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ASTER_MODE=production refuses ASTER_AUTH_MODE=none" in result.stderr


@pytest.mark.parametrize(("reflection", "listed"), [(None, False), ("true", True)])
def test_production_turns_reflection_off_unless_asked(
    tmp_path: Path, reflection: str | None, listed: bool
) -> None:
    env = auth_env(Signer().write_jwks(tmp_path / "jwks.json"), ASTER_MODE="production")
    if reflection is not None:
        env["ASTER_REFLECTION"] = reflection
    ports = Ports()
    key = cli_key(ports, tmp_path, "ops", "admin", **env)
    server = start_server(ports, tmp_path, **env)
    try:
        result = subprocess.run(
            [GRPCURL, "-plaintext", "-H", f"x-api-key: {key}", f"127.0.0.1:{ports.grpc}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (result.returncode == 0) is listed, result.stderr
    finally:
        assert server.stop() == 0
