"""Builds semantic memory from the settings: embedder, vector index,
service, consolidator, builtin tools and the executor's auto-recall hook."""

from __future__ import annotations

from aster.server.agents.service import AgentService
from aster.server.config import Settings
from aster.server.errors import StartupError
from aster.server.memory.auto_recall import AutoRecall
from aster.server.memory.consolidation import (
    Consolidator,
    Summarizer,
    WorkingEntries,
)
from aster.server.memory.embedders.base import EmbedderUnavailable
from aster.server.memory.embedders.registry import build_embedder
from aster.server.memory.semantic_service import ScopeCheck, SemanticMemoryService
from aster.server.memory.semantic_servicer import SemanticMemory
from aster.server.memory.semantic_tools import SemanticMemoryTools
from aster.server.memory.vector_index import AutoVectorIndex
from aster.server.providers.registry import ProviderRegistry
from aster.server.runs.executor import RunExecutor
from aster.server.storage.database import Database
from aster.server.storage.room_repository import RoomRepository
from aster.server.storage.semantic_memory_repository import SemanticMemoryRepository
from aster.server.storage.session_repository import SessionRepository
from aster.server.tools.service import ToolService


def build_semantic_memory(
    settings: Settings,
    database: Database,
    *,
    agents: AgentService,
    providers: ProviderRegistry,
    tools: ToolService,
    executor: RunExecutor,
    scopes: ScopeCheck | None = None,
    working: WorkingEntries | None = None,
) -> SemanticMemory:
    """Semantic memory wired into the tools and the run executor. Raises
    EmbedderUnavailable if ASTER_EMBEDDER names an embedder not installed."""
    repository = SemanticMemoryRepository(database)
    rooms = RoomRepository(database)
    try:
        embedder = build_embedder(
            settings.embedder,
            openai_model=settings.embedder_openai_model,
            openai_base_url=settings.embedder_openai_base_url,
        )
    except EmbedderUnavailable as err:
        raise StartupError(f"ASTER_EMBEDDER={settings.embedder}: {err.message}") from err
    service = SemanticMemoryService(
        repository,
        embedder,
        AutoVectorIndex(repository, settings.memory_cache_max_vectors),
        scopes,
    )
    consolidator = Consolidator(
        service,
        Summarizer(agents, providers, SessionRepository(database), rooms),
        working,
        settings.memory_consolidate_threshold,
    )
    for tool in SemanticMemoryTools(service).tools():
        tools.register_builtin(tool)
    executor.context_hooks.append(AutoRecall(service))
    return SemanticMemory(service, consolidator)
