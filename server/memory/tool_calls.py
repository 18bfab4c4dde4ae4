"""What the memory builtins share: the caller and the scope it names, and
service errors turned into tool errors (which the model sees)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aster.server.errors import AsterError
from aster.server.memory.working_models import Scope
from aster.server.tools.call_context import ToolCallContext, require_tool_call
from aster.server.tools.models import ToolError

SCOPES = ("agent", "session", "room", "tenant")
# The `scope` parameter of every memory builtin.
SCOPE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "enum": list(SCOPES),
    "default": "agent",
    "description": (
        "Whose memory: 'agent' (yours, across conversations; the default), 'session' (this "
        "conversation only), 'room' (the room you speak in) or 'tenant' (shared by every agent)."
    ),
}


def scope_for(caller: ToolCallContext, name: str) -> Scope:
    """The scope `name` means for `caller`; ToolError if it has none."""
    if name == "agent":
        return Scope(agent_id=caller.agent_id)
    if name == "session":
        return Scope(session_id=caller.session_id)
    if name == "room":
        if not caller.room_id:
            raise ToolError("scope 'room' needs a run in a room; this run is not in one")
        return Scope(room_id=caller.room_id)
    if name == "tenant":
        return Scope()
    raise ToolError(f"scope must be one of {', '.join(SCOPES)} (got {name!r:.40})")


def caller_and_scope(tool_id: str, arguments: Mapping[str, Any]) -> tuple[ToolCallContext, Scope]:
    """The agent calling `tool_id` and the scope its `scope` argument names
    (its own agent scope by default); ToolError outside a run."""
    caller = require_tool_call(tool_id)
    return caller, scope_for(caller, str(arguments.get("scope") or "agent"))


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turns a service error in the block into a ToolError with its message."""
    try:
        yield
    except AsterError as err:
        raise ToolError(err.message) from None
