"""The rules of semantic memory: add, search, provenance; consolidation
lives in consolidation.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition
from aster.server.ids import check_id, new_id
from aster.server.memory.embedders.base import Embedder, Vectors
from aster.server.memory.embedders.registry import NO_EMBEDDER
from aster.server.memory.semantic_models import (
    Memory,
    NewMemory,
    Provenance,
    Scope,
    SearchHit,
    SearchQuery,
    VectorQuery,
)
from aster.server.memory.semantic_validation import (
    check_metadata,
    check_min_score,
    check_text,
    top_k,
)
from aster.server.memory.vector_index import VectorIndex
from aster.server.storage.semantic_memory_repository import SemanticMemoryRepository

ID_PREFIX = "mem"
# GetProvenance follows at most this many memories of a lineage.
MAX_PROVENANCE = 1000
# With a metadata filter, search asks the index for this many times top_k
# candidates, and again for more while the filter leaves too few.
FILTER_WIDENING = 4


class ScopeCheck(Protocol):
    """Checks that a scope's ids exist in the tenant (NOT_FOUND otherwise)."""

    async def check(self, tenant: str, scope: Scope, prefix: str = "") -> Scope:
        """`scope`, or INVALID_ARGUMENT/NOT_FOUND naming the field."""


class SemanticMemoryService:
    """Semantic memories of every tenant; each call names the caller's
    tenant. Without an embedder (`None`) every call is FAILED_PRECONDITION
    naming what to install."""

    def __init__(
        self,
        repository: SemanticMemoryRepository,
        embedder: Embedder | None,
        index: VectorIndex,
        scopes: ScopeCheck | None = None,
    ) -> None:
        self.repository = repository
        self._embedder = embedder
        self.index = index
        self._scopes = scopes

    @property
    def embedder(self) -> Embedder:
        """The embedder; FAILED_PRECONDITION if there is none."""
        if self._embedder is None:
            raise FailedPrecondition(NO_EMBEDDER, field="embedder")
        return self._embedder

    async def aclose(self) -> None:
        """Releases the embedder."""
        if self._embedder is not None:
            await self._embedder.aclose()

    async def check_scope(self, tenant: str, scope: Scope, prefix: str = "") -> Scope:
        """`scope` with well-formed ids that exist in the tenant."""
        for name in ("agent_id", "session_id", "room_id"):
            if getattr(scope, name):
                check_id(getattr(scope, name), f"{prefix}{name}")
        if self._scopes is not None:
            await self._scopes.check(tenant, scope, prefix)
        return scope

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors of `texts` by the current embedder."""
        return await self.embedder.embed(texts)

    async def add(self, tenant: str, new: NewMemory, proposed_id: str = "") -> Memory:
        """Validates, embeds and stores one memory."""
        return (await self.add_many(tenant, [new], [proposed_id]))[0]

    async def add_many(
        self, tenant: str, items: Sequence[NewMemory], proposed_ids: Sequence[str] = ()
    ) -> list[Memory]:
        """Validates, embeds (in one batch) and stores memories."""
        embedder = self.embedder
        ids = list(proposed_ids) + [""] * (len(items) - len(proposed_ids))
        memories = []
        for index, (new, proposed) in enumerate(zip(items, ids, strict=True)):
            prefix = "memory." if len(items) == 1 else f"memories[{index}]."
            check_text(new.text, f"{prefix}text")
            check_metadata(new.metadata, f"{prefix}metadata")
            await self.check_scope(tenant, new.scope, prefix)
            memory_id = check_id(proposed, "memory_id") if proposed else new_id(ID_PREFIX)
            memories.append(
                Memory(
                    id=memory_id,
                    text=new.text,
                    metadata=new.metadata,
                    scope=new.scope,
                    source=new.source,
                    embedder=embedder.name,
                    embedder_version=embedder.version,
                    create_time=utcnow(),
                )
            )
        vectors = await embedder.embed([m.text for m in memories])
        for memory, vector in zip(memories, vectors, strict=True):
            await self.repository.add(tenant, memory, vector)
        return memories

    async def get(self, tenant: str, memory_id: str) -> Memory:
        """One memory, or NOT_FOUND."""
        return await self.repository.get(tenant, check_id(memory_id, "memory_id"))

    async def search(self, tenant: str, query: SearchQuery) -> list[SearchHit]:
        """The memories nearest `query.query` among the current embedder's,
        best first, filtered by scope, metadata and min_score."""
        check_text(query.query, "query")
        limit = top_k(query.top_k)
        min_score = check_min_score(query.min_score)
        scope = await self.check_scope(tenant, query.scope)
        embedder = self.embedder
        vector = (await embedder.embed([query.query]))[0]
        wanted = limit * FILTER_WIDENING if query.metadata_filter else limit
        while True:
            hits = await self.index.search(
                tenant,
                VectorQuery(
                    (embedder.name, embedder.version),
                    vector,
                    scope,
                    query.include_superseded,
                    wanted,
                ),
            )
            found = await self.repository.get_many(tenant, [memory_id for memory_id, _ in hits])
            results = []
            exhausted = len(hits) < wanted
            for memory_id, score in hits:
                if min_score is not None and score < min_score:
                    exhausted = True
                    break
                memory = found.get(memory_id)
                if memory is None or not _matches(memory.metadata, query.metadata_filter):
                    continue
                results.append(SearchHit(memory, score))
            if len(results) >= limit or exhausted:
                return results[:limit]
            wanted *= FILTER_WIDENING

    async def provenance(self, tenant: str, memory_id: str) -> Provenance:
        """Where the memory came from, with its lineage (the memories it was
        consolidated from, recursively; at most MAX_PROVENANCE memories)."""
        root = await self.get(tenant, memory_id)
        known: dict[str, Memory] = {root.id: root}
        frontier = list(root.consolidated_from)
        while frontier and len(known) < MAX_PROVENANCE:
            batch = [i for i in frontier if i not in known][: MAX_PROVENANCE - len(known)]
            found = await self.repository.get_many(tenant, batch)
            known.update(found)
            frontier = [s for m in found.values() for s in m.consolidated_from if s not in known]

        def build(memory: Memory, seen: frozenset[str]) -> Provenance:
            sources = tuple(
                build(known[s], seen | {s})
                for s in memory.consolidated_from
                if s in known and s not in seen
            )
            return Provenance(memory=memory, tenant=tenant, consolidated_from=sources)

        return build(root, frozenset({root.id}))


def _matches(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(key in metadata and same_json(metadata[key], value) for key, value in wanted.items())


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 equals 1.0, as every number is a
    double in a Struct), but a boolean equals only a boolean (Python's
    `True == 1` does not hold in JSON)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    numbers = isinstance(a, int | float) and isinstance(b, int | float)
    return (numbers or type(a) is type(b)) and bool(a == b)
