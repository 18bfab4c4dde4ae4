"""The `anthropic` provider: the Messages API through the official SDK,
streamed, with tool use."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

import anthropic
import httpx2
from anthropic import AsyncAnthropic
from anthropic.types import (
    ContentBlockParam,
    MessageParam,
    ToolParam,
)

from aster.server.errors import AsterError, InvalidArgument, Unavailable
from aster.server.providers.base import (
    EMPTY_OBJECT_SCHEMA,
    ChatMessage,
    Delta,
    Finish,
    FinishReason,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)
from aster.server.providers.http_errors import (
    error_detail,
    error_for_status,
    error_for_stream_error,
    error_type,
    redact,
)

# The Messages API requires max_tokens; this is used when the agent sets none.
DEFAULT_MAX_TOKENS = 1024

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


def tool_input(arguments: str) -> dict[str, object]:
    """A tool call's JSON arguments as the `input` object of a `tool_use`
    block. Empty arguments are `{}`; arguments that are not a JSON object
    (the model produced bad JSON) travel as `{"arguments": <the text>}` so
    the conversation stays sendable."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    if isinstance(value, dict):
        return value
    return {"arguments": value}


def anthropic_conversation(
    messages: Sequence[ChatMessage],
) -> tuple[str, list[MessageParam]]:
    """The system prompt and the messages in Messages API form.

    System messages are joined into `system`; assistant tool calls become
    `tool_use` blocks; tool results become `tool_result` blocks of a user
    message. Consecutive messages of the same role are merged (the API wants
    alternating turns, and all results of one assistant turn in one user
    message); empty text is left out (the API rejects empty text blocks)."""
    system_parts: list[str] = []
    turns: list[tuple[Literal["user", "assistant"], list[ContentBlockParam]]] = []

    def add(role: Literal["user", "assistant"], blocks: list[ContentBlockParam]) -> None:
        if not blocks:
            return
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))

    for message in messages:
        if message.role == "system":
            if message.content:
                system_parts.append(message.content)
        elif message.role == "user":
            if message.content:
                add("user", [{"type": "text", "text": message.content}])
        elif message.role == "assistant":
            blocks: list[ContentBlockParam] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(call.arguments),
                    }
                )
            add("assistant", blocks)
        else:
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.tool_call_id,
                        "content": message.content,
                    }
                ],
            )
    conversation: list[MessageParam] = []
    for role, content in turns:
        if role == "user":
            conversation.append({"role": "user", "content": content})
        else:
            conversation.append({"role": "assistant", "content": content})
    return "\n\n".join(system_parts), conversation


def anthropic_tools(tools: Sequence[ToolSpec]) -> list[ToolParam]:
    """The tools in Messages API form (`name`, `description`, `input_schema`)."""
    return [
        {
            "name": tool.name,
            "description": tool.description,
            "input_schema": tool.parameters or EMPTY_OBJECT_SCHEMA,
        }
        for tool in tools
    ]


class AnthropicProvider:
    """Streams replies from the Anthropic Messages API.

    `client` is shared (the registry caches one per endpoint and key);
    `api_key` is only used to keep the key out of error messages."""

    name = "anthropic"

    def __init__(self, client: AsyncAnthropic, *, api_key: str = "") -> None:
        self._client = client
        self._secret = api_key

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]:
        """The reply to `request`, delta by delta, ending with a Finish.

        Closing the generator (or cancelling its consumer) closes the HTTP
        response, which drops the connection to the model server."""
        config = request.config
        if not config.model:
            raise InvalidArgument(
                "model.model must name the model for provider anthropic", field="model.model"
            )
        system, conversation = anthropic_conversation(request.messages)
        options: dict[str, Any] = {}
        if system:
            options["system"] = system
        if request.tools:
            options["tools"] = anthropic_tools(request.tools)
        # `temperature` is not sent: the Messages API version this SDK speaks
        # (2026-10-21) rejects sampling parameters, and the SDK no longer has them.

        try:
            response = await self._client.messages.create(
                model=config.model,
                max_tokens=config.max_output_tokens or DEFAULT_MAX_TOKENS,
                messages=conversation,
                stream=True,
                **options,
            )
        except anthropic.APIError as exc:
            raise self._error(exc) from None

        # Content block index -> (tool call number, whether arguments came).
        tool_blocks: dict[int, int] = {}
        start_inputs: dict[int, dict[str, object]] = {}
        got_arguments: set[int] = set()
        input_tokens = 0
        output_tokens = 0
        stop: FinishReason | None = None
        stopped = False
        try:
            async for event in response:
                if event.type == "message_start":
                    usage = event.message.usage
                    input_tokens = (
                        usage.input_tokens
                        + (usage.cache_creation_input_tokens or 0)
                        + (usage.cache_read_input_tokens or 0)
                    )
                    output_tokens = usage.output_tokens
                elif event.type == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        number = len(tool_blocks)
                        tool_blocks[event.index] = number
                        if isinstance(block.input, dict) and block.input:
                            start_inputs[event.index] = block.input
                        yield ToolCallDelta(index=number, id=block.id, name=block.name)
                elif event.type == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        if delta.text:
                            yield TextDelta(delta.text)
                    elif delta.type == "input_json_delta":
                        number_or_none = tool_blocks.get(event.index)
                        if number_or_none is not None and delta.partial_json:
                            got_arguments.add(event.index)
                            yield ToolCallDelta(index=number_or_none, arguments=delta.partial_json)
                elif event.type == "content_block_stop":
                    # A tool_use block whose input came whole in its start.
                    if event.index in start_inputs and event.index not in got_arguments:
                        yield ToolCallDelta(
                            index=tool_blocks[event.index],
                            arguments=json.dumps(start_inputs[event.index]),
                        )
                elif event.type == "message_delta":
                    if event.usage.input_tokens is not None:
                        input_tokens = (
                            event.usage.input_tokens
                            + (event.usage.cache_creation_input_tokens or 0)
                            + (event.usage.cache_read_input_tokens or 0)
                        )
                    output_tokens = event.usage.output_tokens
                    yield UsageDelta(input_tokens=input_tokens, output_tokens=output_tokens)
                    reason = event.delta.stop_reason
                    stop = _STOP_REASONS.get(reason, "stop") if reason else "stop"
                elif event.type == "message_stop":
                    stopped = True
        except anthropic.APIError as exc:
            raise self._error(exc, streaming=True) from None
        except (httpx2.HTTPError, httpx2.StreamError, json.JSONDecodeError):
            raise Unavailable(
                "anthropic: the reply stream broke off", provider="anthropic"
            ) from None
        finally:
            await response.close()
        if not stopped or stop is None:
            raise Unavailable(
                "anthropic: the reply stream ended before the reply finished",
                provider="anthropic",
            )
        yield Finish(stop)

    def _error(self, exc: anthropic.APIError, *, streaming: bool = False) -> AsterError:
        if isinstance(exc, anthropic.APIStatusError) and exc.status_code >= 400:
            return error_for_status(
                "anthropic",
                exc.status_code,
                error_detail(exc.body, f"HTTP {exc.status_code}"),
                headers=exc.response.headers,
                secret=self._secret,
            )
        if isinstance(exc, anthropic.APITimeoutError):
            what = "the reply stream stalled" if streaming else "the request timed out"
            return Unavailable(f"anthropic: {what}", provider="anthropic")
        if isinstance(exc, anthropic.APIConnectionError):
            what = "the reply stream broke off" if streaming else "cannot connect"
            return Unavailable(f"anthropic: {what}", provider="anthropic")
        if isinstance(exc, anthropic.APIResponseValidationError):
            return Unavailable(
                f"anthropic: the reply was malformed: {redact(exc.message, self._secret)}",
                provider="anthropic",
            )
        # An `error` event inside the stream (the HTTP status was 200).
        detail = error_detail(exc.body, "error event in the reply stream")
        return error_for_stream_error(
            "anthropic", error_type(exc.body), detail, secret=self._secret
        )
