"""The scripted provider: exact, deterministic semantics of its params."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from aster.server.agents.models import ModelConfig
from aster.server.errors import (
    AsterError,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from aster.server.providers.base import (
    ChatMessage,
    Finish,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallRequest,
    UsageDelta,
)
from aster.server.providers.scripted import ScriptedProvider, split_words
from tests.unit.providers import Collected, collect


def request(*messages: ChatMessage, **params: Any) -> ModelRequest:
    return ModelRequest(config=ModelConfig(provider="scripted", params=params), messages=messages)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str = "", *calls: ToolCallRequest) -> ChatMessage:
    return ChatMessage(role="assistant", content=text, tool_calls=calls)


async def run(req: ModelRequest) -> Collected:
    return await collect(ScriptedProvider().stream(req))


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "  leading and trailing  ",
        "tabs\tand\nnew lines\n\n",
        "one",
        "   ",
        "",
        "ünïcödé wörds — and dashes",
    ],
)
def test_split_words_joins_back_exactly(text: str) -> None:
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert all(piece.strip() or not text.strip() for piece in pieces)
    assert len(pieces) == (len(text.split()) or (1 if text else 0))


async def test_without_a_script_it_echoes_the_last_user_message_word_by_word() -> None:
    got = await run(
        request(
            ChatMessage(role="system", content="Be brief."),
            user("first question"),
            assistant("an answer"),
            user("Hello  big\nworld"),
        )
    )
    assert got.text_deltas == ["Echo: ", "Hello  ", "big\n", "world"]
    assert got.text == "Echo: Hello  big\nworld"
    # Usage: words of every request message; words of the reply.
    assert got.usage == UsageDelta(input_tokens=2 + 2 + 2 + 3, output_tokens=4)
    assert got.deltas[-2:] == [got.usage, Finish("stop")]
    assert got.tool_calls == []


async def test_the_turn_is_picked_by_the_number_of_assistant_messages_modulo_the_script() -> None:
    script = [{"text": "zero"}, {"text": "one"}, {"text": "two"}]
    history: list[ChatMessage] = [user("go")]
    replies = []
    for _ in range(5):
        got = await run(request(*history, script=script))
        replies.append(got.text)
        history += [assistant(got.text), user("again")]
    assert replies == ["zero", "one", "two", "zero", "one"]


async def test_tool_calls_stream_ids_names_then_sorted_compact_arguments_in_two_pieces() -> None:
    script = [
        {"text": "ignored turn"},
        {
            "text": "Let me look.",
            "tool_calls": [
                {"name": "search", "arguments": {"q": "rain", "a": [1, 2]}},
                {"name": "clock"},
            ],
        },
    ]
    history = (user("hi"), assistant("hello"), user("weather?"))
    got = await run(request(*history, script=script))

    assert got.text == "Let me look."
    tool_deltas = [d for d in got.deltas if isinstance(d, ToolCallDelta)]
    args0 = json.dumps({"q": "rain", "a": [1, 2]}, separators=(",", ":"), sort_keys=True)
    assert args0 == '{"a":[1,2],"q":"rain"}'
    assert tool_deltas == [
        ToolCallDelta(index=0, id="call_1_0", name="search"),
        ToolCallDelta(index=0, arguments=args0[: len(args0) // 2]),
        ToolCallDelta(index=0, arguments=args0[len(args0) // 2 :]),
        ToolCallDelta(index=1, id="call_1_1", name="clock"),
        ToolCallDelta(index=1, arguments="{"),
        ToolCallDelta(index=1, arguments="}"),
    ]
    # Order: all text, then tool calls, then usage, then finish.
    kinds = [type(d).__name__ for d in got.deltas]
    assert kinds == ["TextDelta"] * 3 + ["ToolCallDelta"] * 6 + ["UsageDelta", "Finish"]
    assert got.usage == UsageDelta(input_tokens=1 + 1 + 1, output_tokens=3 + 2)
    assert got.finish == Finish("tool_calls")
    assert [json.loads(call.arguments) for call in got.tool_calls] == [
        {"a": [1, 2], "q": "rain"},
        {},
    ]


async def test_call_ids_use_the_turn_number_not_the_script_index() -> None:
    script = [{"tool_calls": [{"name": "t", "arguments": {}}]}]
    history = (user("a"), assistant("", ToolCallRequest("x", "t", "{}")), user("b"), assistant())
    got = await run(request(*history, script=script))
    assert got.tool_calls[0].id == "call_2_0"
    assert got.text_deltas == []
    assert got.usage == UsageDelta(input_tokens=2, output_tokens=1)


async def test_token_delay_sleeps_before_each_text_delta() -> None:
    started = time.monotonic()
    got = await run(request(user("a b c d"), token_delay_ms=40))
    elapsed = time.monotonic() - started
    assert len(got.text_deltas) == 5  # "Echo: " + four words
    assert elapsed >= 5 * 0.040 * 0.9


async def test_no_delay_by_default() -> None:
    started = time.monotonic()
    await run(request(user(" ".join(["w"] * 200))))
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("UNAVAILABLE", Unavailable),
        ("RESOURCE_EXHAUSTED", ResourceExhausted),
        ("UNAUTHENTICATED", Unauthenticated),
    ],
)
@pytest.mark.parametrize("after", [0, 2])
async def test_fail_raises_after_n_text_deltas(
    code: str, error: type[AsterError], after: int
) -> None:
    got = Collected()
    fail = {"code": code, "after_deltas": after}
    with pytest.raises(error):
        await collect(
            ScriptedProvider().stream(request(user("one two three"), fail=fail)), into=got
        )
    assert got.text_deltas == ["Echo: ", "one ", "two ", "three"][:after]
    assert all(isinstance(d, TextDelta) for d in got.deltas)


async def test_fail_after_more_deltas_than_the_text_has_fails_after_all_of_them() -> None:
    got = Collected()
    script = [{"text": "short", "tool_calls": [{"name": "t"}]}]
    fail = {"code": "UNAVAILABLE", "after_deltas": 10}
    with pytest.raises(Unavailable):
        await collect(
            ScriptedProvider().stream(request(user("x"), script=script, fail=fail)), into=got
        )
    assert got.text_deltas == ["short"]
    assert got.tool_calls == []
    assert got.finish is None


async def test_params_from_a_struct_arrive_as_floats() -> None:
    got = Collected()
    fail = {"code": "RESOURCE_EXHAUSTED", "after_deltas": 1.0, "retry_after_s": 2.5}
    with pytest.raises(ResourceExhausted) as caught:
        await collect(
            ScriptedProvider().stream(request(user("a b"), fail=fail, token_delay_ms=1.0)),
            into=got,
        )
    assert caught.value.retry_after_s == 2.5
    assert got.text_deltas == ["Echo: "]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"token_delay_ms": "fast"}, "model.params.token_delay_ms"),
        ({"token_delay_ms": -1}, "model.params.token_delay_ms"),
        ({"script": "hello"}, "model.params.script"),
        ({"script": ["hello"]}, "model.params.script[0]"),
        ({"script": [{"text": 3}]}, "model.params.script[0].text"),
        ({"script": [{"tool_calls": [{"arguments": {}}]}]}, "model.params.script[0].tool_calls[0]"),
        ({"fail": {"code": "NOT_FOUND"}}, "model.params.fail.code"),
        ({"fail": "yes"}, "model.params.fail"),
    ],
)
async def test_malformed_params_are_invalid_argument_naming_the_field(
    params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await run(request(user("x"), **params))
    assert caught.value.field == field


async def test_an_empty_script_echoes() -> None:
    got = await run(request(user("hi"), script=[]))
    assert got.text == "Echo: hi"


async def test_closing_the_stream_mid_way_stops_it_promptly() -> None:
    stream = ScriptedProvider().stream(request(user("a b c d e f"), token_delay_ms=5000))
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
    assert time.monotonic() - started < 1.0
