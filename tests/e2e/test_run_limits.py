"""Server-side caps on runs: tokens, wall time and input size."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.chat_helpers import event_from_json, kinds, scripted_agent, sse_events, words
from tests.processes import Ports, start_server
from tests.rpc_errors import error_info, expect_error


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ports]:
    ports = Ports()
    server = start_server(
        ports,
        tmp_path_factory.mktemp("limits"),
        ASTER_RUN_MAX_TOKENS="30",
        ASTER_RUN_TIMEOUT_S="1",
        ASTER_MAX_INPUT_CHARS="50",
        ASTER_RUN_MAX_STEPS="3",
    )
    yield ports
    assert server.stop() == 0


@pytest.fixture
async def agents(limited: Ports) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.grpc}") as channel:
        yield agent_pb2_grpc.AgentServiceStub(channel)


async def run_events(
    agents: agent_pb2_grpc.AgentServiceStub, agent_id: str
) -> list[run_pb2.ChatEvent]:
    request = agent_pb2.ChatRequest(agent_id=agent_id, message="go")
    return [e async for e in agents.Chat(request)]


async def test_token_cap_ends_the_run(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, script=[{"text": words(40)}])
    events = await run_events(agents, agent.id)
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == "RESOURCE_EXHAUSTED"
    assert "ASTER_RUN_MAX_TOKENS" in error.message
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_FAILED


async def test_wall_time_cap_ends_the_run(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, script=[{"text": words(20)}], delay_ms=200)
    events = await run_events(agents, agent.id)
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == "DEADLINE_EXCEEDED"
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_FAILED


async def test_max_steps_comes_from_the_settings(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    loop = [{"tool_calls": [{"name": "get_time", "arguments": {}}]}]
    agent = await scripted_agent(agents, script=loop, tools=["get_time"])
    events = await run_events(agents, agent.id)
    assert kinds(events).count("tool_result") == 3
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_FAILED


async def test_long_input_is_invalid(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents)
    err = await expect_error(
        agents.RunAgent(agent_pb2.RunAgentRequest(agent_id=agent.id, message="x" * 51)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "message"


async def test_tool_loop_over_sse_through_envoy(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/agents",
        json={
            "display_name": "sse-tools",
            "tools": ["calculator"],
            "model": {
                "provider": "scripted",
                "params": {
                    "script": [
                        {
                            "tool_calls": [
                                {"name": "calculator", "arguments": {"expression": "2+2"}}
                            ]
                        },
                        {"text": "Four."},
                    ]
                },
            },
        },
    )
    agent_id = created.json()["id"]
    events = [
        event_from_json(data)
        async for data in sse_events(
            http, "POST", f"/v1/agents/{agent_id}/chat", json={"message": "2+2?"}
        )
    ]
    result = next(e.tool_result for e in events if e.WhichOneof("event") == "tool_result")
    assert result.output.number_value == 4
    assert events[-1].run_finished.result.content == "Four."
