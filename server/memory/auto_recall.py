"""Auto-recall: agents with `memory.auto_recall` get the semantic memories
closest to the run's input in their context, as a system message after
their instructions. The run executor calls `AutoRecall` before each model
call; the memories are searched once per run."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import structlog

from aster.server.agents.models import Agent
from aster.server.errors import AsterError
from aster.server.memory.semantic_models import Scope, SearchQuery
from aster.server.memory.semantic_service import SemanticMemoryService
from aster.server.providers.base import ChatMessage
from aster.server.runs.models import Run

_log = structlog.get_logger("aster.memory")

DEFAULT_RECALL_TOP_K = 5
HEADER = "Memories that may be relevant (closest first):"
# Runs whose recalled memories are kept for their later model calls.
CACHED_RUNS = 256


class AutoRecall:
    """The context hook of the run executor."""

    def __init__(self, service: SemanticMemoryService) -> None:
        self._service = service
        self._recent: OrderedDict[str, tuple[ChatMessage, ...]] = OrderedDict()

    async def __call__(self, run: Run, agent: Agent) -> Sequence[ChatMessage]:
        """The system message of recalled memories, or nothing."""
        config = agent.spec.memory
        if not config.auto_recall or not run.input_text.strip():
            return ()
        cached = self._recent.get(run.id)
        if cached is not None:
            return cached
        try:
            hits = await self._service.search(
                run.tenant,
                SearchQuery(
                    query=run.input_text,
                    top_k=config.recall_top_k or DEFAULT_RECALL_TOP_K,
                    scope=Scope(agent_id=agent.id),
                    min_score=config.recall_min_score,
                ),
            )
        except AsterError as err:
            # A run goes on without memories rather than failing for them.
            _log.warning("auto-recall failed", run_id=run.id, error=err.message)
            return ()
        messages: tuple[ChatMessage, ...] = ()
        if hits:
            lines = "\n".join(f"- {h.memory.text}" for h in hits)
            messages = (ChatMessage(role="system", content=f"{HEADER}\n{lines}"),)
        self._recent[run.id] = messages
        while len(self._recent) > CACHED_RUNS:
            self._recent.popitem(last=False)
        return messages
