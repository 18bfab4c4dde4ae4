"""The openai provider through the real SDK against the fake model server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
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
from aster.server.providers.base import (
    ChatMessage,
    Finish,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    UsageDelta,
)
from aster.server.providers.http_errors import parse_retry_after
from aster.server.providers.openai_provider import OpenAIProvider
from aster.server.providers.registry import ProviderRegistry
from tests.fakes import FakeModelServer, FakeToolCall, Reply
from tests.unit.providers import Collected, collect

KEY = "sk-test-openai-0123456789"
KEY_ENV = "ASTER_TEST_OPENAI_KEY"


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
        provider="openai",
        model="gpt-test",
        base_url=fake.openai_base_url,
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


def provider(registry: ProviderRegistry, fake: FakeModelServer, **changes: object) -> ModelProvider:
    return registry.provider(config(fake, **changes))


async def test_text_streams_in_pieces_that_join_to_the_reply(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    text = "It is sunny in Paris, 24 degrees.\nEnjoy!"
    fake.enqueue(Reply(text=text, usage=(31, 9)))
    got = await collect(provider(registry, fake).stream(conversation(config(fake))))

    assert got.text == text
    assert len(got.text_deltas) == len(text.split())
    assert got.tool_calls == []
    assert got.usage == UsageDelta(input_tokens=31, output_tokens=9)
    assert got.deltas[-1] == Finish("stop")
    assert isinstance(got.deltas[-2], UsageDelta)


async def test_tool_call_deltas_reassemble_into_the_calls(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    calls = [
        FakeToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, id="call_abc"),
        FakeToolCall("get_time", {"zone": "Europe/Paris"}, id="call_def"),
    ]
    fake.enqueue(Reply(text="Checking.", tool_calls=calls, args_chunk_chars=5))
    got = await collect(provider(registry, fake).stream(conversation(config(fake))))

    assert got.text == "Checking."
    assert [(c.id, c.name) for c in got.tool_calls] == [
        ("call_abc", "get_weather"),
        ("call_def", "get_time"),
    ]
    assert [json.loads(c.arguments) for c in got.tool_calls] == [
        {"city": "Paris", "unit": "celsius"},
        {"zone": "Europe/Paris"},
    ]
    # The arguments really came in several pieces.
    assert sum(1 for d in got.deltas if getattr(d, "arguments", "")) > 4
    assert got.finish == Finish("tool_calls")


async def test_the_request_carries_model_history_tools_options_and_key(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    cfg = config(fake, temperature=0.3, max_output_tokens=256)
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
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=(ToolCallRequest("call_1", "get_weather", '{"city":"Paris"}'),),
        ),
        ChatMessage(role="tool", content='{"temp": 24}', tool_call_id="call_1"),
        ChatMessage(role="assistant", content="24 degrees."),
        ChatMessage(role="user", content="Thanks"),
    )
    fake.enqueue(Reply(text="You're welcome."))
    await collect(registry.provider(cfg).stream(ModelRequest(cfg, history, tools)))

    sent = fake.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.api_key == KEY
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = sent.json
    assert body["model"] == "gpt-test"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 256
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "ping",
                "description": "No arguments",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 24}'},
        {"role": "assistant", "content": "24 degrees."},
        {"role": "user", "content": "Thanks"},
    ]


async def test_unset_options_are_not_sent(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    await collect(provider(registry, fake).stream(conversation(config(fake))))
    body = fake.last_request.json
    assert "temperature" not in body
    assert "max_tokens" not in body
    assert "tools" not in body


async def test_a_model_name_is_required(registry: ProviderRegistry, fake: FakeModelServer) -> None:
    cfg = config(fake, model="")
    with pytest.raises(InvalidArgument) as caught:
        await collect(registry.provider(cfg).stream(conversation(cfg)))
    assert caught.value.field == "model.model"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply.error(401), Unauthenticated),
        (Reply.error(403), PermissionDenied),
        (Reply.error(429, retry_after="7"), ResourceExhausted),
        (Reply.error(500), Unavailable),
        (Reply.error(503), Unavailable),
        (Reply.error(400, "max_tokens is too large"), InvalidArgument),
        (Reply.error(404, "The model does not exist"), InvalidArgument),
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
    assert "openai" in caught.value.message
    if reply.error_message:
        assert reply.error_message in caught.value.message
    if reply.status == 429:
        assert isinstance(caught.value, ResourceExhausted)
        assert caught.value.retry_after_s == 7.0
    # The SDK does not retry on its own: Aster decides.
    assert len(fake.requests) == 1


async def test_errors_never_quote_the_api_key(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply.error(401, f"Incorrect API key provided: {KEY}."))
    with pytest.raises(Unauthenticated) as caught:
        await collect(provider(registry, fake).stream(conversation(config(fake))))
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value.metadata)
    assert "Incorrect API key provided" in caught.value.message


async def test_a_cut_stream_is_unavailable_not_a_hang(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="one two three four five", cut_after=2))
    got = Collected()
    with pytest.raises(Unavailable):
        await collect(provider(registry, fake).stream(conversation(config(fake))), 5, got)
    assert got.text_deltas == ["one ", "two "]
    assert got.finish is None


async def test_a_stream_cut_after_the_last_piece_but_before_the_finish_is_unavailable(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="all of it", cut_after=100))
    got = Collected()
    with pytest.raises(Unavailable):
        await collect(provider(registry, fake).stream(conversation(config(fake))), 5, got)
    assert got.text == "all of it"


async def test_an_error_inside_the_stream_is_unavailable(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="one two three", error_after=1))
    with pytest.raises(Unavailable):
        await collect(provider(registry, fake).stream(conversation(config(fake))))


async def test_a_stalled_stream_times_out_as_unavailable(
    fake: FakeModelServer, tmp_path: Path
) -> None:
    registry = ProviderRegistry(tmp_path, read_timeout_s=0.3)
    try:
        fake.enqueue(Reply(text="one two three", stall_after=1))
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await collect(registry.provider(config(fake)).stream(conversation(config(fake))), 5)
        assert time.monotonic() - started < 3
    finally:
        await registry.aclose()


async def test_an_unreachable_server_is_unavailable(registry: ProviderRegistry) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = ModelConfig(
        provider="openai",
        model="m",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=SecretRef(env=KEY_ENV),
    )
    with pytest.raises(Unavailable):
        await collect(registry.provider(cfg).stream(conversation(cfg)), 5)


async def test_closing_the_iterator_mid_stream_drops_the_connection(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="one two three four", stall_after=2))
    chosen = provider(registry, fake)
    assert isinstance(chosen, OpenAIProvider)  # its stream is an async generator: it has aclose()
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


async def test_slow_streams_are_still_complete(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    fake.enqueue(Reply(text="a b c", chunk_delay_s=0.05))
    got = await collect(provider(registry, fake).stream(conversation(config(fake))))
    assert got.text == "a b c"
    await fake.wait_for_completed_streams(1)
    assert fake.completed_streams == 1
    assert fake.disconnects == 0


async def test_the_registry_reuses_one_client_per_endpoint_and_key(
    fake: FakeModelServer, registry: ProviderRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = registry.provider(config(fake))
    assert registry.provider(config(fake, temperature=0.9, model="other")) is first
    assert registry.client_count == 1
    other_url = registry.provider(config(fake, base_url=fake.url + "/v1/"))
    assert other_url is not first
    monkeypatch.setenv(KEY_ENV, "sk-rotated")
    rotated = registry.provider(config(fake))
    assert rotated is not first
    assert registry.client_count == 3

    await collect(rotated.stream(conversation(config(fake))))
    assert fake.last_request.api_key == "sk-rotated"
    # Two runs on one warm client.
    await collect(first.stream(conversation(config(fake))))
    await collect(first.stream(conversation(config(fake))))
    assert [r.api_key for r in fake.requests] == ["sk-rotated", KEY, KEY]

    await registry.aclose()
    assert registry.client_count == 0


async def test_a_key_file_in_the_secrets_dir_is_used(
    fake: FakeModelServer, registry: ProviderRegistry
) -> None:
    (registry.secrets_dir / "openai.key").write_text("  sk-from-file \n")
    cfg = config(fake, api_key=SecretRef(file="openai.key"))
    await collect(registry.provider(cfg).stream(conversation(cfg)))
    assert fake.last_request.api_key == "sk-from-file"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate

    value = parse_retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert value is not None
    assert 25 <= value <= 31
