"""Who is calling a tool: set by whoever runs an agent's tool call, read by
builtin tools that scope or attribute what they do (memory, rooms)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from aster.server.tools.models import ToolError


@dataclass(frozen=True)
class ToolCallContext:
    """The caller of one tool call: its tenant, agent, session, run and the
    model's tool-call id, plus the room it speaks in (if any) and free-form
    extras (for example a workflow execution and step)."""

    tenant: str
    agent_id: str
    session_id: str
    run_id: str
    tool_call_id: str
    room_id: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    # The stored assistant message that asked for the call ("" if unknown).
    message_id: str = ""


_current: ContextVar[ToolCallContext | None] = ContextVar("aster_tool_call", default=None)


def current_tool_call() -> ToolCallContext | None:
    """The tool call being executed, or None outside an agent's tool call."""
    return _current.get()


def require_tool_call(tool_id: str) -> ToolCallContext:
    """The tool call being executed; a ToolError naming `tool_id` when it is
    called outside an agent's run (for example through ExecuteTool)."""
    context = _current.get()
    if context is None:
        raise ToolError(f"{tool_id!r} can only be called by an agent during a run")
    return context


@contextmanager
def tool_call_scope(context: ToolCallContext) -> Iterator[None]:
    """Makes `context` the current tool call for the block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
