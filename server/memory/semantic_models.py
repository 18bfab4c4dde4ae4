"""Domain types of semantic memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# One scope type for working and semantic memory.
from aster.server.memory.embedders.base import Vectors
from aster.server.memory.working_models import Scope as Scope


@dataclass(frozen=True)
class MemorySource:
    """What a memory was taken from, when known."""

    run_id: str = ""
    session_id: str = ""
    message_id: str = ""
    tool_call_id: str = ""
    working_memory_entry_id: str = ""


@dataclass(frozen=True)
class NewMemory:
    """What a caller gives to store a memory."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    scope: Scope = field(default_factory=Scope)
    source: MemorySource = field(default_factory=MemorySource)


@dataclass(frozen=True)
class Memory:
    """A stored semantic memory (without its vector)."""

    id: str
    text: str
    metadata: dict[str, Any]
    scope: Scope
    source: MemorySource
    embedder: str
    embedder_version: str
    create_time: datetime
    superseded_by: str = ""
    consolidated_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class VectorQuery:
    """What a vector index searches: the `limit` memories of one embedder
    (name, version) nearest `vector` whose scope ids match every id set in
    `scope`, superseded ones only if asked."""

    embedder: tuple[str, str]
    vector: Vectors
    scope: Scope
    include_superseded: bool
    limit: int


@dataclass(frozen=True)
class SearchQuery:
    """A SearchMemory request, validated."""

    query: str
    top_k: int = 10
    scope: Scope = field(default_factory=Scope)
    metadata_filter: dict[str, Any] = field(default_factory=dict)
    min_score: float | None = None
    include_superseded: bool = False


@dataclass(frozen=True)
class SearchHit:
    """One search result: the memory and its cosine similarity to the query."""

    memory: Memory
    score: float


@dataclass(frozen=True)
class Provenance:
    """Where a memory came from, with the provenance of its sources."""

    memory: Memory
    tenant: str
    consolidated_from: tuple[Provenance, ...] = ()


@dataclass(frozen=True)
class ConsolidationReport:
    """What one consolidation changed."""

    merged_ids: tuple[str, ...] = ()
    created_ids: tuple[str, ...] = ()
    superseded_ids: tuple[str, ...] = ()
