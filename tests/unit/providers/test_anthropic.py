"""The anthropic provider through the real SDK against the fake model server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aster.server.agents.models import ModelConfig, SecretRef
from aster.server.errors import (
    AsterError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from aster.server.providers.anthropic_provider import (
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
    tool_input,
)
from aster.server.providers.base import (
    ChatMessage,
    Finish,
    FinishReason,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallRequest,
    ToolSpec,
    UsageDelta,
)
from aster.server.providers.registry import ProviderRegistry
from tests.fakes import FakeModelServer, FakeToolCall, Reply
from tests.unit.providers import Collected, collect

KEY = "sk-ant-test-0123456789"
KEY_ENV = "ASTER_TEST_ANTHROPIC_KEY"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake: FakeModelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset()
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[ProviderRegistry]:
    reg = ProviderRegistry(tmp_path, read_timeout_s=5.0)
    yield reg
    await reg.aclose()


def config(fake: FakeModelServer, **changes: object) -> ModelConfig:
    base = ModelConfig(
        provider="anthropic",
        model="claude-test",
        base_url=fake.anthropic_base_url,
        api_key=SecretRef(env=KEY_ENV),
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def conversation(cfg: ModelConfig, *tools: ToolSpec) -> ModelRequest:
    return ModelRequest(
        config=cfg,
        messages=(
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content="What is the weather in Paris?"),
        ),
        tools=tools,
    )


def provider(registry: ProviderRegistry, fake: FakeModelServer) -> ModelProvider:
    return registry.provider(config(fake))


async def test_text_streams_in_pieces_that_join_to_the_reply(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    text = "It is sunny in Paris, 24 degrees.\nEnjoy!"
    fake.enqueue(Reply(text=text, usage=(42, 11)))
    got = await collect(provider(registry, fake).stream(conversation(config(fake))))

    assert got.text == text
    assert len(got.text_deltas) == len(text.split())
    assert got.tool_calls == []
    # input_tokens from message_start, output_tokens from message_delta.
    assert got.usage == UsageDelta(input_tokens=42, output_tokens=11)
    assert got.deltas[-1] == Finish("stop")


async def test_tool_use_blocks_become_tool_call_deltas_numbered_from_zero(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    calls = [
        FakeToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="toolu_1"),
        FakeToolCall("get_time", {"zone": "Europe/Paris"}, id="toolu_2"),
    ]
    fake.enqueue(Reply(text="Checking.", tool_calls=calls, args_chunk_chars=4))
    got = await collect(provider(registry, fake).stream(conversation(config(fake))))

    assert got.text == "Checking."
    # The text block is content block 0; tool calls are still indexed 0 and 1.
    firsts = [d for d in got.deltas if isinstance(d, ToolCallDelta) and d.id]
    assert firsts == [
        ToolCallDelta(index=0, id="toolu_1", name="get_weather"),
        ToolCallDelta(index=1, id="toolu_2", name="get_time"),
    ]
    assert [json.loads(c.arguments) for c in got.tool_calls] == [
        {"city": "Paris", "unit": "celsius"},
        {"zone": "Europe/Paris"},
    ]
    assert sum(1 for d in got.deltas if isinstance(d, ToolCallDelta) and d.arguments) > 4
    assert got.finish == Finish("tool_calls")


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(
    fake: FakeModelServer, registry: ProviderRegistry, stop_reason: str, finish: FinishReason
) -> None:
    fake.enqueue(Reply(text="x", finish_reason=stop_reason))
    got = await collect(provider(registry, fake).stream(conversation(config(fake))))
    assert got.finish == Finish(finish)


async def test_the_request_carries_system_history_tools_and_key(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    cfg = config(fake, temperature=0.4, max_output_tokens=300)
    tools = (
        ToolSpec(
            name="get_weather",
            description="Weather for a city",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        ),
        ToolSpec(name="ping", description="No arguments"),
    )
    history = (
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="Weather and time in Paris?"),
        ChatMessage(
            role="assistant",
            content="Let me check.",
            tool_calls=(
                ToolCallRequest("toolu_1", "get_weather", '{"city":"Paris"}'),
                ToolCallRequest("toolu_2", "ping", ""),
            ),
        ),
        ChatMessage(role="tool", content='{"temp": 24}', tool_call_id="toolu_1"),
        ChatMessage(role="tool", content="pong", tool_call_id="toolu_2"),
        ChatMessage(role="assistant", content="24 degrees."),
        ChatMessage(role="user", content="Thanks"),
    )
    fake.enqueue(Reply(text="You're welcome."))
    await collect(registry.provider(cfg).stream(ModelRequest(cfg, history, tools)))

    sent = fake.last_request
    assert sent.path.split("?")[0] == "/v1/messages"
    assert sent.api_key == KEY
    body = sent.json
    assert body["model"] == "claude-test"
    assert body["stream"] is True
    assert body["max_tokens"] == 300
    # The Messages API version the SDK speaks rejects sampling parameters.
    assert "temperature" not in body
    assert body["system"] == "You are terse."
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {
            "name": "ping",
            "description": "No arguments",
            "input_schema": {"type": "object", "properties": {}},
        },
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "ping", "input": {}},
            ],
        },
        # Both results in one user message.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp": 24}'},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "pong"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "24 degrees."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ]


async def test_max_tokens_defaults_and_unset_options_are_not_sent(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    cfg = config(fake)
    request = ModelRequest(cfg, (ChatMessage(role="user", content="hi"),))
    await collect(registry.provider(cfg).stream(request))
    body = fake.last_request.json
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert "temperature" not in body
    assert "tools" not in body
    assert "system" not in body


def test_tool_input_keeps_bad_arguments_sendable() -> None:
    assert tool_input("") == {}
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("[1, 2]") == {"arguments": [1, 2]}
    assert tool_input("{not json") == {"arguments": "{not json"}


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply.error(401), Unauthenticated),
        (Reply.error(403), PermissionDenied),
        (Reply.error(429, retry_after="12"), ResourceExhausted),
        (Reply.error(500), Unavailable),
        (Reply.error(529), Unavailable),
        (Reply.error(400, "messages: roles must alternate"), InvalidArgument),
        (Reply.error(413), InvalidArgument),
    ],
)
async def test_http_errors_map_to_aster_errors(
    fake: FakeModelServer, registry: ProviderRegistry, reply: Reply, error: type[AsterError]
) -> None:
    fake.enqueue(reply)
    with pytest.raises(AsterError) as caught:
        await collect(provider(registry, fake).stream(conversation(config(fake))))
    assert type(caught.value) is error
    assert f"HTTP {reply.status}" in caught.value.message
    assert "anthropic" in caught.value.message
    if reply.error_message:
        assert reply.error_message in caught.value.message
    if reply.status == 429:
        assert isinstance(caught.value, ResourceExhausted)
        assert caught.value.retry_after_s == 12.0
    assert len(fake.requests) == 1


async def test_errors_never_quote_the_api_key(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply.error(403, f"key {KEY} may not use this model"))
    with pytest.raises(PermissionDenied) as caught:
        await collect(provider(registry, fake).stream(conversation(config(fake))))
    assert KEY not in str(caught.value)
    assert "may not use this model" in caught.value.message


@pytest.mark.parametrize(
    ("error_type", "error"),
    [
        ("overloaded_error", Unavailable),
        ("api_error", Unavailable),
        ("rate_limit_error", ResourceExhausted),
    ],
)
async def test_an_error_event_inside_the_stream_maps_by_its_type(
    fake: FakeModelServer, registry: ProviderRegistry, error_type: str, error: type[AsterError]
) -> None:
    fake.enqueue(Reply(text="one two three", error_after=1, error_type=error_type))
    got = Collected()
    with pytest.raises(error):
        await collect(provider(registry, fake).stream(conversation(config(fake))), 5, got)
    assert got.text_deltas == ["one "]


async def test_a_cut_stream_is_unavailable_not_a_hang(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="one two three four five", cut_after=3))
    got = Collected()
    with pytest.raises(Unavailable):
        await collect(provider(registry, fake).stream(conversation(config(fake))), 5, got)
    assert got.text_deltas == ["one ", "two ", "three "]
    assert got.finish is None


async def test_a_stream_cut_before_message_stop_is_unavailable(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="all of it", tool_calls=[FakeToolCall("t", {"a": 1})], cut_after=99))
    got = Collected()
    with pytest.raises(Unavailable):
        await collect(provider(registry, fake).stream(conversation(config(fake))), 5, got)
    assert got.text == "all of it"
    assert got.finish is None


async def test_closing_the_iterator_mid_stream_drops_the_connection(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="one two three four", stall_after=2))
    chosen = provider(registry, fake)
    assert isinstance(
        chosen, AnthropicProvider
    )  # its stream is an async generator: it has aclose()
    stream = chosen.stream(conversation(config(fake)))
    first = await asyncio.wait_for(stream.__anext__(), 5)
    assert first == TextDelta("one ")
    assert fake.disconnects == 0
    await stream.aclose()
    await fake.wait_for_disconnects(1, within_s=1.0)
    assert fake.completed_streams == 0


async def test_cancelling_the_consumer_drops_the_connection(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="one two three four", stall_after=1))
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _delta in provider(registry, fake).stream(conversation(config(fake))):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_for_disconnects(1, within_s=1.0)
