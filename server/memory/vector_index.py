"""Vector search behind one interface: exact cosine search over cached numpy
matrices (SQLite, and PostgreSQL without pgvector), or pgvector's `<=>` when
the database has it."""

from __future__ import annotations

import abc
import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from aster.server.memory.embedders.base import Vectors
from aster.server.memory.semantic_models import VectorQuery
from aster.server.storage.semantic_memory_repository import (
    SemanticMemoryRepository,
    VectorChunk,
    embedder_key,
)

Hits = list[tuple[str, float]]


class VectorIndex(abc.ABC):
    """Finds the memories nearest a query vector among one tenant's memories
    of one embedder."""

    name: str

    @abc.abstractmethod
    async def search(self, tenant: str, query: VectorQuery) -> Hits:
        """(memory id, cosine similarity) of the `query.limit` nearest
        memories matching `query`, best first."""


class _Codes:
    """Interns scope ids as small integers so masks are integer compares."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {"": 0}

    def code(self, value: str) -> int:
        return self._codes.setdefault(value, len(self._codes))

    def find(self, value: str) -> int | None:
        return self._codes.get(value)


@dataclass
class _Matrix:
    """One tenant's vectors of one embedder, grown in place."""

    generation: int = -1
    max_seq: int = 0
    size: int = 0
    vectors: Vectors = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    seqs: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scope: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int32))
    superseded: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    ids: list[str] = field(default_factory=list)
    codes: _Codes = field(default_factory=_Codes)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def append(self, chunk: VectorChunk) -> None:
        count, dims = chunk.vectors.shape
        needed = self.size + count
        if needed > self.vectors.shape[0] or dims != self.vectors.shape[1]:
            capacity = max(needed, 2 * self.vectors.shape[0], 1024)
            self.vectors = _grow(self.vectors, capacity, dims)
            self.seqs = np.resize(self.seqs, capacity)
            self.scope = np.resize(self.scope, (capacity, 3))
            self.superseded = np.resize(self.superseded, capacity)
        end = self.size + count
        self.vectors[self.size : end] = chunk.vectors
        self.seqs[self.size : end] = chunk.seqs
        self.scope[self.size : end] = [
            (self.codes.code(a), self.codes.code(s), self.codes.code(r))
            for a, s, r in zip(chunk.agent_ids, chunk.session_ids, chunk.room_ids, strict=True)
        ]
        self.superseded[self.size : end] = chunk.superseded
        self.ids.extend(chunk.ids)
        self.size = end
        self.max_seq = chunk.seqs[-1]


def _grow(vectors: Vectors, capacity: int, dims: int) -> Vectors:
    grown = np.zeros((capacity, dims), dtype=np.float32)
    if vectors.shape[1] == dims:
        grown[: vectors.shape[0]] = vectors
    return grown


class ExactVectorIndex(VectorIndex):
    """Exact search: a matrix product over the tenant's vectors, kept in
    memory per (tenant, embedder) and refreshed when the generation the
    repository bumps on every write has moved (new rows are appended; the
    superseded flags are re-read). At most `max_cached_vectors` vectors stay
    cached; the least recently searched matrices are dropped first."""

    name = "exact"

    def __init__(
        self, repository: SemanticMemoryRepository, max_cached_vectors: int = 2_000_000
    ) -> None:
        self._repository = repository
        self._max_cached = max_cached_vectors
        self._matrices: OrderedDict[tuple[str, str], _Matrix] = OrderedDict()

    async def _fresh(self, tenant: str, name: str, version: str) -> _Matrix:
        key = (tenant, embedder_key(name, version))
        matrix = self._matrices.get(key)
        if matrix is None:
            matrix = self._matrices[key] = _Matrix()
        self._matrices.move_to_end(key)
        async with matrix.lock:
            generation = await self._repository.generation(tenant, key[1])
            if generation != matrix.generation:
                async for chunk in self._repository.vector_chunks(
                    tenant, name, version, matrix.max_seq
                ):
                    matrix.append(chunk)
                superseded = await self._repository.superseded_seqs(tenant, name, version)
                matrix.superseded[: matrix.size] = np.isin(
                    matrix.seqs[: matrix.size], np.asarray(superseded, dtype=np.int64)
                )
                matrix.generation = generation
        self._evict()
        return matrix

    def _evict(self) -> None:
        total = sum(m.size for m in self._matrices.values())
        while total > self._max_cached and len(self._matrices) > 1:
            _, dropped = self._matrices.popitem(last=False)
            total -= dropped.size

    async def search(self, tenant: str, query: VectorQuery) -> Hits:
        """Scores every vector of the tenant's matrix, masks by scope and
        supersession, and returns the top `limit`."""
        matrix = await self._fresh(tenant, *query.embedder)
        size, scope, limit = matrix.size, query.scope, query.limit
        if size == 0 or limit <= 0:
            return []
        vector = np.asarray(query.vector, dtype=np.float32).ravel()
        if vector.shape[0] != matrix.vectors.shape[1]:
            return []
        mask = np.ones(size, dtype=bool)
        for column, value in enumerate((scope.agent_id, scope.session_id, scope.room_id)):
            if value:
                code = matrix.codes.find(value)
                if code is None:
                    return []
                mask &= matrix.scope[:size, column] == code
        if not query.include_superseded:
            mask &= ~matrix.superseded[:size]
        candidates = np.flatnonzero(mask)
        if candidates.size == 0:
            return []
        if candidates.size == size:
            scores = matrix.vectors[:size] @ vector
        else:
            scores = matrix.vectors[candidates] @ vector
        count = min(limit, scores.shape[0])
        top = np.argpartition(-scores, count - 1)[:count]
        top = top[np.argsort(-scores[top], kind="stable")]
        rows = top if candidates.size == size else candidates[top]
        return [(matrix.ids[int(r)], float(scores[int(t)])) for r, t in zip(rows, top, strict=True)]


class PgVectorIndex(VectorIndex):
    """pgvector's exact `<=>` (cosine distance) in SQL. Untested on the
    development machines, which have no pgvector."""

    name = "pgvector"

    def __init__(self, repository: SemanticMemoryRepository) -> None:
        self._repository = repository

    async def search(self, tenant: str, query: VectorQuery) -> Hits:
        """The nearest memories, by the database."""
        return await self._repository.pg_search(tenant, query)


class AutoVectorIndex(VectorIndex):
    """pgvector where the schema has its column, exact search otherwise;
    decided on first use (after migrations)."""

    def __init__(
        self, repository: SemanticMemoryRepository, max_cached_vectors: int = 2_000_000
    ) -> None:
        self._repository = repository
        self._max_cached = max_cached_vectors
        self._chosen: VectorIndex | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        """The chosen index's name (`exact` before the first search)."""
        return self._chosen.name if self._chosen is not None else "exact"

    async def chosen(self) -> VectorIndex:
        """The index in use."""
        if self._chosen is None:
            if await self._repository.has_pgvector():
                self._chosen = PgVectorIndex(self._repository)
            else:
                self._chosen = ExactVectorIndex(self._repository, self._max_cached)
        return self._chosen

    async def search(self, tenant: str, query: VectorQuery) -> Hits:
        """Delegates to the chosen index."""
        return await (await self.chosen()).search(tenant, query)
