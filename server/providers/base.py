"""The one interface every model provider implements: stream a reply to a
conversation as an async iterator of deltas."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aster.server.agents.models import ModelConfig

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCallRequest:
    """A complete tool call the model made: id, tool name, JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation sent to the model."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()
    # For role "tool": the call this message answers.
    tool_call_id: str = ""


# The schema of a tool that takes no arguments (a tool needs an object schema
# on the wire even then).
EMPTY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, description and JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRequest:
    """Everything a provider needs for one model call."""

    config: ModelConfig
    # The system prompt travels as the first message, role "system".
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call. The first piece of call `index` carries `id`
    and `name`; later pieces append to `arguments` (JSON text)."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class UsageDelta:
    """Token counts of the call so far (the latest value wins)."""

    input_tokens: int
    output_tokens: int


FinishReason = Literal["stop", "tool_calls", "length", "content_filter"]


@dataclass(frozen=True)
class Finish:
    """The model finished its reply."""

    reason: FinishReason


Delta = TextDelta | ToolCallDelta | UsageDelta | Finish


class ModelProvider(Protocol):
    """Streams one model reply. Implementations raise the errors of
    `aster.server.errors` (Unauthenticated, PermissionDenied,
    ResourceExhausted with retry_after_s, Unavailable, InvalidArgument) and
    close their HTTP connection when the iterator is closed (cancellation)."""

    name: str

    def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]:
        """The reply, delta by delta, ending with a Finish."""
        ...
