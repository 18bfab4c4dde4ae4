"""Runs on the real openai and anthropic SDK providers, against a fake model
server that speaks their streaming wire formats: streaming, tools, errors and
cancellation closing the connection to the model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.chat_helpers import assert_sequence, kinds, text_of, words
from tests.fakes.model_server import FakeModelServer, FakeToolCall, Reply
from tests.processes import Ports, Process, start_server

KEY_VARIABLE = "FAKE_MODEL_API_KEY"
KEY = "sk-test-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModelServer]:
    with FakeModelServer(expected_api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ports, Process]]:
    ports = Ports()
    process = start_server(ports, tmp_path_factory.mktemp("providers"), **{KEY_VARIABLE: KEY})
    yield ports, process
    assert process.stop() == 0
    assert KEY not in process.log_path.read_text(), "the API key reached the log"


@pytest.fixture
async def agents(server: tuple[Ports, Process]) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server[0].grpc}") as channel:
        yield agent_pb2_grpc.AgentServiceStub(channel)


async def make_agent(
    agents: agent_pb2_grpc.AgentServiceStub,
    fake: FakeModelServer,
    provider: str,
    tools: list[str] | None = None,
    key_variable: str = KEY_VARIABLE,
) -> agent_pb2.Agent:
    base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    agent = agent_pb2.Agent(
        display_name=f"{provider}-agent",
        instructions="Be brief.",
        model=agent_pb2.ModelConfig(
            provider=provider,
            model="model-test",
            base_url=base_url,
            api_key=agent_pb2.SecretRef(env=key_variable),
        ),
        tools=tools or [],
    )
    return await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent))


async def chat(agents: agent_pb2_grpc.AgentServiceStub, agent_id: str) -> list[run_pb2.ChatEvent]:
    request = agent_pb2.ChatRequest(agent_id=agent_id, message="hello")
    return [e async for e in agents.Chat(request)]


PROVIDERS = ["openai", "anthropic"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_text(
    agents: agent_pb2_grpc.AgentServiceStub, fake: FakeModelServer, provider: str
) -> None:
    fake.reset()
    fake.enqueue(Reply(text="Streaming from the fake model."))
    agent = await make_agent(agents, fake, provider)
    events = await chat(agents, agent.id)
    assert_sequence(events)
    assert text_of(events) == "Streaming from the fake model."
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_COMPLETED
    request = fake.last_request.json
    assert request["model"] == "model-test"
    assert request["stream"] is True


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_loop_through_the_sdk(
    agents: agent_pb2_grpc.AgentServiceStub, fake: FakeModelServer, provider: str
) -> None:
    fake.reset()
    fake.enqueue(
        Reply(tool_calls=[FakeToolCall("calculator", {"expression": "12*12"}, id="call_calc")]),
        Reply(text="It is 144."),
    )
    agent = await make_agent(agents, fake, provider, tools=["calculator"])
    events = await chat(agents, agent.id)
    result = next(e.tool_result for e in events if e.WhichOneof("event") == "tool_result")
    assert result.output.number_value == 144
    assert text_of(events) == "It is 144."
    assert len(fake.requests) == 2
    # The second request carries the tool call and its result back to the model.
    assert "144" in str(fake.requests[1].json)
    tools_sent = str(fake.requests[0].json.get("tools"))
    assert "calculator" in tools_sent


@pytest.mark.parametrize(
    ("provider", "status", "code"),
    [
        ("openai", 429, "RESOURCE_EXHAUSTED"),
        ("anthropic", 429, "RESOURCE_EXHAUSTED"),
        ("openai", 500, "UNAVAILABLE"),
        ("anthropic", 529, "UNAVAILABLE"),
    ],
)
async def test_provider_errors_fail_the_run_with_a_clear_code(
    agents: agent_pb2_grpc.AgentServiceStub,
    fake: FakeModelServer,
    provider: str,
    status: int,
    code: str,
) -> None:
    fake.reset()
    fake.enqueue(Reply.error(status, retry_after="7"))
    agent = await make_agent(agents, fake, provider)
    events = await chat(agents, agent.id)
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == code
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_FAILED


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_bad_key_is_unauthenticated(
    agents: agent_pb2_grpc.AgentServiceStub, fake: FakeModelServer, provider: str
) -> None:
    fake.reset()
    agent = await make_agent(agents, fake, provider, key_variable="PATH")
    events = await chat(agents, agent.id)
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == "UNAUTHENTICATED"
    assert KEY not in error.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_stream_cut_midway_fails_never_hangs(
    agents: agent_pb2_grpc.AgentServiceStub, fake: FakeModelServer, provider: str
) -> None:
    fake.reset()
    fake.enqueue(Reply(text=words(30), cut_after=5))
    agent = await make_agent(agents, fake, provider)
    events = await chat(agents, agent.id)
    assert kinds(events)[-2:] == ["error", "run_finished"]
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_FAILED


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancel_closes_the_connection_to_the_model(
    agents: agent_pb2_grpc.AgentServiceStub, fake: FakeModelServer, provider: str
) -> None:
    fake.reset()
    fake.enqueue(Reply(text=words(400), chunk_delay_s=0.05))
    agent = await make_agent(agents, fake, provider)
    call = agents.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="go"))
    seen = [await call.read() for _ in range(4)]
    await fake.wait_for_requests(1)
    cancelled = await agents.CancelRun(agent_pb2.CancelRunRequest(run_id=seen[0].run_id))
    assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
    await fake.wait_for_disconnects(1, within_s=3)
    assert fake.completed_streams == 0
    rest = []
    while (event := await call.read()) is not grpc.aio.EOF:
        rest.append(event)
    assert rest[-1].run_finished.status == run_pb2.RUN_STATUS_CANCELLED


def test_server_log_never_holds_the_key(server: tuple[Ports, Process]) -> None:
    assert KEY not in Path(server[1].log_path).read_text()
