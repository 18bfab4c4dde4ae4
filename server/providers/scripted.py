"""The scripted provider: offline, deterministic replies for development and
tests, driven by the agent's `model.params`.

Params (all optional):

* `token_delay_ms` (number, default 0): sleep this long before each text delta.
* `script`: a list of turns `{"text": str, "tool_calls": [{"name": str,
  "arguments": object}]}`; the turn used is `script[k % len(script)]`, where k
  is the number of assistant messages in the request. Without a script the
  reply is `"Echo: " + <last user message>`.
* `fail`: `{"code": "UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "UNAUTHENTICATED",
  "after_deltas": N, "retry_after_s": S}` raises that error after N text
  deltas (after all of them if the reply has fewer).

The text streams word by word (each delta is a word and the whitespace after
it), then each tool call as a `ToolCallDelta` with id `call_<k>_<j>` and name,
then its compact, key-sorted JSON arguments in two pieces; then usage (words
of the request, words of the reply plus one per tool call) and the finish."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aster.server.errors import (
    AsterError,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from aster.server.providers.base import (
    Delta,
    Finish,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)

_WORD = re.compile(r"\s*\S+\s*")
FAIL_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED")


def split_words(text: str) -> list[str]:
    """`text` cut into word-sized pieces whose concatenation is exactly `text`:
    each piece is a word plus the whitespace after it (leading whitespace goes
    with the first word)."""
    pieces = _WORD.findall(text)
    if not pieces:
        return [text] if text else []
    return pieces


def count_words(text: str) -> int:
    """The number of whitespace-separated words in `text`."""
    return len(text.split())


@dataclass(frozen=True)
class _ScriptedCall:
    name: str
    arguments: str


@dataclass(frozen=True)
class _Failure:
    code: str
    after_deltas: int
    retry_after_s: float | None

    def error(self) -> AsterError:
        message = f"scripted failure: {self.code}"
        if self.code == "UNAVAILABLE":
            return Unavailable(message, provider="scripted")
        if self.code == "RESOURCE_EXHAUSTED":
            return ResourceExhausted(message, retry_after_s=self.retry_after_s, provider="scripted")
        return Unauthenticated(message, provider="scripted")


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"model.params.{field}: {message}", field=f"model.params.{field}")


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(field, "must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise _invalid(field, "must be a non-negative number")
    return number


def _parse_failure(value: object) -> _Failure | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _invalid("fail", "must be an object with code and after_deltas")
    code = value.get("code")
    if code not in FAIL_CODES:
        raise _invalid("fail.code", f"must be one of {', '.join(FAIL_CODES)}")
    after = _number(value.get("after_deltas", 0), "fail.after_deltas")
    retry_raw = value.get("retry_after_s")
    retry = None if retry_raw is None else _number(retry_raw, "fail.retry_after_s")
    return _Failure(code=str(code), after_deltas=int(after), retry_after_s=retry)


def _parse_turn(turn: object, index: int) -> tuple[str, list[_ScriptedCall]]:
    field = f"script[{index}]"
    if not isinstance(turn, Mapping):
        raise _invalid(field, "must be an object with text and/or tool_calls")
    text = turn.get("text", "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise _invalid(f"{field}.text", "must be a string")
    raw_calls = turn.get("tool_calls") or []
    if not isinstance(raw_calls, Sequence) or isinstance(raw_calls, str):
        raise _invalid(f"{field}.tool_calls", "must be a list")
    calls = []
    for j, call in enumerate(raw_calls):
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise _invalid(f"{field}.tool_calls[{j}]", "must be an object with a string name")
        arguments = call.get("arguments", {})
        if arguments is None:
            arguments = {}
        encoded = json.dumps(arguments, separators=(",", ":"), sort_keys=True)
        calls.append(_ScriptedCall(name=call["name"], arguments=encoded))
    return text, calls


def _echo(request: ModelRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return "Echo: " + message.content
    return "Echo: "


class ScriptedProvider:
    """Offline, deterministic replies from `model.params` (see the module doc)."""

    name = "scripted"

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]:
        """The scripted reply to `request`, delta by delta, ending with a Finish.

        Params are checked before the first delta: a malformed one raises
        InvalidArgument naming it."""
        params: Mapping[str, Any] = request.config.params or {}
        delay_s = _number(params.get("token_delay_ms", 0), "token_delay_ms") / 1000
        failure = _parse_failure(params.get("fail"))
        turn_number = sum(1 for message in request.messages if message.role == "assistant")

        script = params.get("script")
        if script is None or (isinstance(script, Sequence) and len(script) == 0):
            text, calls = _echo(request), list[_ScriptedCall]()
        elif isinstance(script, Sequence) and not isinstance(script, str):
            index = turn_number % len(script)
            text, calls = _parse_turn(script[index], index)
        else:
            raise _invalid("script", "must be a list of turns")

        for sent, piece in enumerate(split_words(text)):
            if failure is not None and sent >= failure.after_deltas:
                raise failure.error()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            yield TextDelta(piece)
        if failure is not None:
            raise failure.error()

        for j, call in enumerate(calls):
            yield ToolCallDelta(index=j, id=f"call_{turn_number}_{j}", name=call.name)
            half = len(call.arguments) // 2
            yield ToolCallDelta(index=j, arguments=call.arguments[:half])
            yield ToolCallDelta(index=j, arguments=call.arguments[half:])

        input_tokens = sum(count_words(message.content) for message in request.messages)
        yield UsageDelta(input_tokens=input_tokens, output_tokens=count_words(text) + len(calls))
        yield Finish("tool_calls" if calls else "stop")
