"""The builtin tools `remember` and `recall`: an agent stores and searches
semantic memories during a run. They scope by default to the calling agent
(`scope` picks its session, its room or the tenant instead); what `remember`
stores records the tenant, agent, session, run and tool call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aster.server.memory.semantic_models import MemorySource, NewMemory, SearchQuery
from aster.server.memory.semantic_service import SemanticMemoryService
from aster.server.memory.semantic_validation import MAX_TEXT, MAX_TOP_K
from aster.server.memory.tool_calls import SCOPE_SCHEMA, caller_and_scope, tool_errors
from aster.server.tools.builtins import BuiltinTool
from aster.server.tools.models import ToolError

REMEMBER = "remember"
RECALL = "recall"

_REMEMBER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT,
            "description": "What to remember, as a self-contained statement.",
        },
        "metadata": {"type": "object", "description": "Optional data to keep with it."},
        "scope": SCOPE_SCHEMA,
    },
    "required": ["text"],
    "additionalProperties": False,
}
_RECALL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT,
            "description": "What to look for, in words.",
        },
        "top_k": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TOP_K,
            "default": 5,
            "description": "How many memories to return.",
        },
        "scope": SCOPE_SCHEMA,
    },
    "required": ["query"],
    "additionalProperties": False,
}


class SemanticMemoryTools:
    """The semantic-memory builtins over one service."""

    def __init__(self, service: SemanticMemoryService) -> None:
        self._service = service

    def tools(self) -> list[BuiltinTool]:
        """The builtins to register with the ToolService."""
        return [
            BuiltinTool(
                REMEMBER,
                "Stores a fact in your long-term memory, to be found later by meaning with "
                "recall. Returns the memory's id.",
                _REMEMBER_PARAMETERS,
                self.remember,
            ),
            BuiltinTool(
                RECALL,
                "Searches your long-term memory by meaning. Returns the closest memories, best "
                "first, each with its text and a score from -1 to 1.",
                _RECALL_PARAMETERS,
                self.recall,
            ),
        ]

    async def remember(self, arguments: Mapping[str, Any], _key: str) -> Any:
        """remember: {text, metadata?, scope?} -> {id, text}."""
        caller, scope = caller_and_scope(REMEMBER, arguments)
        metadata = arguments.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ToolError("metadata must be a JSON object")
        new = NewMemory(
            text=str(arguments.get("text", "")),
            metadata=metadata,
            scope=scope,
            source=MemorySource(
                run_id=caller.run_id,
                session_id=caller.session_id,
                message_id=caller.message_id,
                tool_call_id=caller.tool_call_id,
            ),
        )
        with tool_errors():
            memory = await self._service.add(caller.tenant, new)
        return {"id": memory.id, "text": memory.text}

    async def recall(self, arguments: Mapping[str, Any], _key: str) -> Any:
        """recall: {query, top_k?, scope?} -> {memories: [{id, text, score}]}."""
        caller, scope = caller_and_scope(RECALL, arguments)
        query = SearchQuery(
            query=str(arguments.get("query", "")),
            top_k=int(arguments.get("top_k") or 5),
            scope=scope,
        )
        with tool_errors():
            hits = await self._service.search(caller.tenant, query)
        return {
            "memories": [
                {"id": h.memory.id, "text": h.memory.text, "score": round(h.score, 4)} for h in hits
            ]
        }
