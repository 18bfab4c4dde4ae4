"""The builtin tools `memory_get`, `memory_set` and `memory_delete`: an agent
reads and writes working memory during a run. They scope by default to the
calling agent; `scope` picks its session, its room or the tenant instead.
What they write records the agent, session, run and tool call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aster.server.memory.tool_calls import SCOPE_SCHEMA, caller_and_scope, tool_errors
from aster.server.memory.working_models import EntryValue, WorkingMemoryEntry, Writer
from aster.server.memory.working_service import WorkingMemoryService
from aster.server.memory.working_validation import MAX_KEY, MAX_TTL_SECONDS
from aster.server.tools.builtins import BuiltinTool
from aster.server.tools.call_context import ToolCallContext

MEMORY_GET = "memory_get"
MEMORY_SET = "memory_set"
MEMORY_DELETE = "memory_delete"

_KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_KEY,
    "pattern": "^[A-Za-z0-9_.:/@#+=-]+$",
    "description": "The key: letters, digits and _ - . : / @ # + =, for example 'user:name'.",
}
_GET_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"key": _KEY_SCHEMA, "scope": SCOPE_SCHEMA},
    "required": ["key"],
    "additionalProperties": False,
}
_SET_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "key": _KEY_SCHEMA,
        "value": {"description": "Any JSON value to store."},
        "ttl_seconds": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_TTL_SECONDS,
            "description": "Forget the value after this many seconds; 0 (default) keeps it.",
        },
        "scope": SCOPE_SCHEMA,
        "etag": {
            "type": "string",
            "description": "Only overwrite the value memory_get returned with this etag.",
        },
    },
    "required": ["key", "value"],
    "additionalProperties": False,
}


def _writer(caller: ToolCallContext) -> Writer:
    return Writer(
        agent_id=caller.agent_id,
        session_id=caller.session_id,
        run_id=caller.run_id,
        tool_call_id=caller.tool_call_id,
    )


def _describe(entry: WorkingMemoryEntry) -> dict[str, Any]:
    result: dict[str, Any] = {
        "key": entry.key,
        "value": entry.value,
        "etag": entry.etag,
        "update_time": entry.update_time.isoformat(),
    }
    if entry.expire_time is not None:
        result["expire_time"] = entry.expire_time.isoformat()
    return result


class WorkingMemoryTools:
    """The working-memory builtins over one service."""

    def __init__(self, service: WorkingMemoryService) -> None:
        self._service = service

    def tools(self) -> list[BuiltinTool]:
        """The builtins to register with the ToolService."""
        return [
            BuiltinTool(
                MEMORY_GET,
                "Reads a value you stored with memory_set. Returns found, and if found the "
                "value and its etag.",
                _GET_PARAMETERS,
                self.get,
            ),
            BuiltinTool(
                MEMORY_SET,
                "Stores a JSON value under a key in your working memory, replacing any value "
                "the key had. Returns the key and the new etag.",
                _SET_PARAMETERS,
                self.set,
            ),
            BuiltinTool(
                MEMORY_DELETE,
                "Forgets the value stored under a key. Returns whether there was one.",
                _GET_PARAMETERS,
                self.delete,
            ),
        ]

    async def get(self, arguments: Mapping[str, Any], _key: str) -> Any:
        """memory_get: {key, scope?} -> {found, key, value, etag, ...}."""
        caller, scope = caller_and_scope(MEMORY_GET, arguments)
        with tool_errors():
            entry = await self._service.find(caller.tenant, scope, str(arguments["key"]))
        if entry is None:
            return {"found": False, "key": arguments["key"]}
        return {"found": True, **_describe(entry)}

    async def set(self, arguments: Mapping[str, Any], _key: str) -> Any:
        """memory_set: {key, value, ttl_seconds?, scope?, etag?} -> {key, etag, ...}."""
        caller, scope = caller_and_scope(MEMORY_SET, arguments)
        with tool_errors():
            entry = await self._service.set(
                caller.tenant,
                scope,
                str(arguments["key"]),
                EntryValue(arguments.get("value"), int(arguments.get("ttl_seconds") or 0)),
                etag=str(arguments.get("etag") or ""),
                writer=_writer(caller),
            )
        result = _describe(entry)
        del result["value"]
        return result

    async def delete(self, arguments: Mapping[str, Any], _key: str) -> Any:
        """memory_delete: {key, scope?} -> {deleted}."""
        caller, scope = caller_and_scope(MEMORY_DELETE, arguments)
        with tool_errors():
            deleted = await self._service.delete_key(caller.tenant, scope, str(arguments["key"]))
        return {"deleted": deleted, "key": arguments["key"]}
