"""The builtin `delegate(worker, task)` tool: the leader of a room
collaboration (the leader strategy) hands a task to a worker, whose turn
runs in the room, and reads the worker's answer as the tool's result."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from aster.server.tools.builtins import BuiltinTool
from aster.server.tools.call_context import require_tool_call
from aster.server.tools.models import ToolError

DELEGATE = "delegate"


class Delegator(Protocol):
    """A leader's collaboration in progress."""

    async def delegate(self, leader_id: str, worker: str, task: str) -> str:
        """Runs `worker`'s turn on `task` and returns its answer; ToolError
        when the worker is not one or no turns are left."""
        ...


_current: ContextVar[Delegator | None] = ContextVar("aster_room_delegator", default=None)


@contextmanager
def delegating(delegator: Delegator) -> Iterator[None]:
    """Makes `delegator` the collaboration `delegate` calls reach in the block."""
    token = _current.set(delegator)
    try:
        yield
    finally:
        _current.reset(token)


async def _run(arguments: Mapping[str, Any], idempotency_key: str) -> Any:
    caller = require_tool_call(DELEGATE)
    delegator = _current.get()
    if delegator is None or not caller.room_id:
        raise ToolError(
            "'delegate' only works for the leader of a room collaboration "
            "(RunRoom with strategy leader)"
        )
    worker, task = str(arguments["worker"]), str(arguments["task"])
    answer = await delegator.delegate(caller.agent_id, worker, task)
    return {"worker": worker, "answer": answer}


def delegate_tool() -> BuiltinTool:
    """The `delegate` builtin, for ToolService.register_builtin."""
    return BuiltinTool(
        id=DELEGATE,
        description=(
            "Ask a worker of this room to do a task and get its answer. Use the worker's "
            "agent id. Call it once per worker and task; when you have what you need, reply "
            "with the final answer (without calling a tool)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "worker": {"type": "string", "description": "The worker's agent id."},
                "task": {"type": "string", "description": "What the worker should do."},
            },
            "required": ["worker", "task"],
            "additionalProperties": False,
        },
        run=_run,
    )
