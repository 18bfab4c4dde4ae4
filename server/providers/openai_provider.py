"""The `openai` provider: any OpenAI-compatible Chat Completions endpoint
(OpenAI itself, vLLM, Ollama, LiteLLM, ...) through the official SDK,
streamed, with function calling."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
from openai import AsyncOpenAI
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
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

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def chat_messages(messages: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
    """The conversation in Chat Completions form: assistant tool calls as
    `tool_calls`, tool results as `tool` messages."""
    result: list[ChatCompletionMessageParam] = []
    for message in messages:
        if message.role == "system":
            system: ChatCompletionSystemMessageParam = {
                "role": "system",
                "content": message.content,
            }
            result.append(system)
        elif message.role == "user":
            user: ChatCompletionUserMessageParam = {"role": "user", "content": message.content}
            result.append(user)
        elif message.role == "assistant":
            assistant: ChatCompletionAssistantMessageParam = {"role": "assistant"}
            if message.tool_calls:
                calls: list[ChatCompletionMessageFunctionToolCallParam] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments or "{}"},
                    }
                    for call in message.tool_calls
                ]
                assistant["tool_calls"] = calls
                assistant["content"] = message.content or None
            else:
                assistant["content"] = message.content
            result.append(assistant)
        else:
            tool: ChatCompletionToolMessageParam = {
                "role": "tool",
                "tool_call_id": message.tool_call_id,
                "content": message.content,
            }
            result.append(tool)
    return result


def chat_tools(tools: Sequence[ToolSpec]) -> list[ChatCompletionFunctionToolParam]:
    """The tools in Chat Completions form (`{"type": "function", ...}`)."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters or EMPTY_OBJECT_SCHEMA,
            },
        }
        for tool in tools
    ]


def endpoint_label(base_url: str) -> str:
    """How errors name the endpoint: `openai`, or `openai endpoint <host>` for
    a custom base URL (scheme, host and port only: no credentials or query)."""
    if not base_url:
        return "openai"
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"openai endpoint {parts.scheme}://{host}{port}"


class OpenAIProvider:
    """Streams replies from an OpenAI-compatible Chat Completions endpoint.

    `client` is shared (the registry caches one per endpoint and key);
    `api_key` is only used to keep the key out of error messages."""

    name = "openai"

    def __init__(self, client: AsyncOpenAI, *, api_key: str = "", base_url: str = "") -> None:
        self._client = client
        self._secret = api_key
        self._label = endpoint_label(base_url)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]:
        """The reply to `request`, delta by delta, ending with a Finish.

        Closing the generator (or cancelling its consumer) closes the HTTP
        response, which drops the connection to the model server."""
        config = request.config
        if not config.model:
            raise InvalidArgument(
                "model.model must name the model for provider openai", field="model.model"
            )
        options: dict[str, Any] = {}
        if request.tools:
            options["tools"] = chat_tools(request.tools)
        if config.temperature is not None:
            options["temperature"] = config.temperature
        if config.max_output_tokens is not None:
            options["max_tokens"] = config.max_output_tokens

        try:
            response = await self._client.chat.completions.create(
                model=config.model,
                messages=chat_messages(request.messages),
                stream=True,
                stream_options={"include_usage": True},
                **options,
            )
        except openai.APIError as exc:
            raise self._error(exc) from None

        finish: FinishReason | None = None
        try:
            async for chunk in response:
                if chunk.usage is not None:
                    yield UsageDelta(
                        input_tokens=chunk.usage.prompt_tokens or 0,
                        output_tokens=chunk.usage.completion_tokens or 0,
                    )
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    if delta is not None and delta.content:
                        yield TextDelta(delta.content)
                    for position, call in enumerate((delta and delta.tool_calls) or ()):
                        function = call.function
                        index = call.index if isinstance(call.index, int) else position
                        piece = ToolCallDelta(
                            index=index,
                            id=call.id or "",
                            name=(function.name if function else None) or "",
                            arguments=(function.arguments if function else None) or "",
                        )
                        if piece.id or piece.name or piece.arguments:
                            yield piece
                    if choice.finish_reason:
                        finish = _FINISH_REASONS.get(choice.finish_reason, "stop")
        except openai.APIError as exc:
            raise self._error(exc, streaming=True) from None
        except (httpx2.HTTPError, httpx2.StreamError, json.JSONDecodeError):
            raise Unavailable(
                f"{self._label}: the reply stream broke off", provider="openai"
            ) from None
        finally:
            await response.close()
        if finish is None:
            raise Unavailable(
                f"{self._label}: the reply stream ended before the reply finished",
                provider="openai",
            )
        yield Finish(finish)

    def _error(self, exc: openai.APIError, *, streaming: bool = False) -> AsterError:
        if isinstance(exc, openai.APIStatusError):
            return error_for_status(
                self._label,
                exc.status_code,
                error_detail(exc.body, f"HTTP {exc.status_code}"),
                headers=exc.response.headers,
                secret=self._secret,
            )
        if isinstance(exc, openai.APITimeoutError):
            what = "the reply stream stalled" if streaming else "the request timed out"
            return Unavailable(f"{self._label}: {what}", provider="openai")
        if isinstance(exc, openai.APIConnectionError):
            what = "the reply stream broke off" if streaming else "cannot connect"
            return Unavailable(f"{self._label}: {what}", provider="openai")
        if isinstance(exc, openai.APIResponseValidationError):
            return Unavailable(
                f"{self._label}: the reply was malformed: {redact(exc.message, self._secret)}",
                provider="openai",
            )
        # An `error` object inside the stream (the HTTP status was 200).
        detail = error_detail(exc.body, exc.message)
        return error_for_stream_error(
            self._label, error_type(exc.body), detail, secret=self._secret
        )
