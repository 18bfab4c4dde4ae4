"""The only code that reads and writes semantic memories in SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, NotFound
from aster.server.memory.embedders.base import Vectors
from aster.server.memory.semantic_models import Memory, MemorySource, Scope, VectorQuery
from aster.server.storage.database import Database
from aster.server.storage.semantic_memory_tables import (
    SemanticMemoryGenerationRow,
    SemanticMemoryRow,
)


@dataclass(frozen=True)
class VectorChunk:
    """Rows of one embedder's vectors, in `seq` order, for a vector cache."""

    seqs: list[int]
    ids: list[str]
    agent_ids: list[str]
    session_ids: list[str]
    room_ids: list[str]
    superseded: list[bool]
    vectors: Vectors


def embedder_key(name: str, version: str) -> str:
    """The identity of a vector space."""
    return f"{name}@{version}"


class SemanticMemoryRepository:
    """Semantic memories of one database, always scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pgvector: bool | None = None

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._db.backend

    async def add(self, tenant: str, memory: Memory, vector: Vectors) -> Memory:
        """Stores `memory` with its vector; ALREADY_EXISTS if the id is taken."""
        try:
            async with self._db.session() as session:
                session.add(_row(tenant, memory, vector))
                await self._bump(session, tenant, memory)
        except IntegrityError:
            raise AlreadyExists(f"memory {memory.id!r} already exists", field="memory_id") from None
        if await self.has_pgvector():
            await self._store_pg_vector(tenant, memory.id, vector)
        return memory

    async def merge(
        self, tenant: str, memory: Memory, vector: Vectors, sources: Sequence[str]
    ) -> Memory:
        """Stores `memory` and marks every source superseded by it, in one
        transaction; ABORTED (and nothing changes) if a source is already
        superseded, for example by a concurrent consolidation."""
        async with self._db.session() as session:
            session.add(_row(tenant, memory, vector))
            result = await session.execute(
                update(SemanticMemoryRow)
                .where(
                    SemanticMemoryRow.tenant == tenant,
                    SemanticMemoryRow.id.in_(list(sources)),
                    SemanticMemoryRow.superseded_by == "",
                )
                .values(superseded_by=memory.id)
            )
            if result.rowcount != len(set(sources)):  # type: ignore[attr-defined]
                raise EtagMismatch(
                    "a memory of the consolidation was superseded concurrently; retry",
                    field="memory_id",
                )
            await self._bump(session, tenant, memory)
        if await self.has_pgvector():
            await self._store_pg_vector(tenant, memory.id, vector)
        return memory

    async def _bump(self, session: AsyncSession, tenant: str, memory: Memory) -> None:
        key = embedder_key(memory.embedder, memory.embedder_version)
        result = await session.execute(
            update(SemanticMemoryGenerationRow)
            .where(
                SemanticMemoryGenerationRow.tenant == tenant,
                SemanticMemoryGenerationRow.embedder_key == key,
            )
            .values(generation=SemanticMemoryGenerationRow.generation + 1)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            session.add(SemanticMemoryGenerationRow(tenant=tenant, embedder_key=key, generation=1))

    async def get(self, tenant: str, memory_id: str) -> Memory:
        """The memory, or NOT_FOUND."""
        found = await self.get_many(tenant, [memory_id])
        if memory_id not in found:
            raise NotFound(f"memory {memory_id!r} not found", resource="memory", id=memory_id)
        return found[memory_id]

    async def get_many(self, tenant: str, memory_ids: Sequence[str]) -> dict[str, Memory]:
        """The memories of `memory_ids` that exist, by id."""
        if not memory_ids:
            return {}
        query = select(SemanticMemoryRow).where(
            SemanticMemoryRow.tenant == tenant, SemanticMemoryRow.id.in_(list(memory_ids))
        )
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return {row.id: _to_memory(row) for row in rows}

    async def generation(self, tenant: str, key: str) -> int:
        """How many writes the tenant's memories of embedder `key` have seen."""
        async with self._db.session() as session:
            row = await session.get(SemanticMemoryGenerationRow, (tenant, key))
        return row.generation if row is not None else 0

    async def vector_chunks(
        self, tenant: str, name: str, version: str, after_seq: int, chunk: int = 10_000
    ) -> AsyncIterator[VectorChunk]:
        """The tenant's vectors of one embedder with `seq > after_seq`, in
        chunks of `chunk` rows."""
        columns = (
            SemanticMemoryRow.seq,
            SemanticMemoryRow.id,
            SemanticMemoryRow.agent_id,
            SemanticMemoryRow.session_id,
            SemanticMemoryRow.room_id,
            SemanticMemoryRow.superseded_by,
            SemanticMemoryRow.embedding,
        )
        last = after_seq
        while True:
            query = (
                select(*columns)
                .where(
                    SemanticMemoryRow.tenant == tenant,
                    SemanticMemoryRow.embedder == name,
                    SemanticMemoryRow.embedder_version == version,
                    SemanticMemoryRow.seq > last,
                )
                .order_by(SemanticMemoryRow.seq)
                .limit(chunk)
            )
            async with self._db.session() as session:
                rows = (await session.execute(query)).all()
            if not rows:
                return
            vectors = np.frombuffer(b"".join(r.embedding for r in rows), dtype="<f4")
            yield VectorChunk(
                seqs=[r.seq for r in rows],
                ids=[r.id for r in rows],
                agent_ids=[r.agent_id for r in rows],
                session_ids=[r.session_id for r in rows],
                room_ids=[r.room_id for r in rows],
                superseded=[bool(r.superseded_by) for r in rows],
                vectors=vectors.reshape(len(rows), -1).astype(np.float32),
            )
            last = rows[-1].seq
            if len(rows) < chunk:
                return

    async def superseded_seqs(self, tenant: str, name: str, version: str) -> list[int]:
        """The `seq` of every superseded memory of one embedder."""
        query = select(SemanticMemoryRow.seq).where(
            SemanticMemoryRow.tenant == tenant,
            SemanticMemoryRow.embedder == name,
            SemanticMemoryRow.embedder_version == version,
            SemanticMemoryRow.superseded_by != "",
        )
        async with self._db.session() as session:
            return list((await session.scalars(query)).all())

    async def current_in_scope(
        self, tenant: str, scope: Scope, name: str, version: str
    ) -> list[tuple[Memory, Vectors]]:
        """The unsuperseded memories of exactly `scope` and one embedder,
        oldest first, with their vectors."""
        query = (
            select(SemanticMemoryRow)
            .where(
                SemanticMemoryRow.tenant == tenant,
                SemanticMemoryRow.agent_id == scope.agent_id,
                SemanticMemoryRow.session_id == scope.session_id,
                SemanticMemoryRow.room_id == scope.room_id,
                SemanticMemoryRow.embedder == name,
                SemanticMemoryRow.embedder_version == version,
                SemanticMemoryRow.superseded_by == "",
            )
            .order_by(SemanticMemoryRow.seq)
        )
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return [(_to_memory(r), np.frombuffer(r.embedding, dtype="<f4")) for r in rows]

    async def promoted_texts(self, tenant: str, entry_ids: Sequence[str]) -> set[tuple[str, str]]:
        """(working entry id, text) of the memories promoted from `entry_ids`,
        superseded ones included."""
        if not entry_ids:
            return set()
        query = select(SemanticMemoryRow.source_working_entry_id, SemanticMemoryRow.text).where(
            SemanticMemoryRow.tenant == tenant,
            SemanticMemoryRow.source_working_entry_id.in_(list(entry_ids)),
        )
        async with self._db.session() as session:
            return {(r[0], r[1]) for r in (await session.execute(query)).all()}

    # pgvector (untested here: the development machines have no pgvector) ----

    async def has_pgvector(self) -> bool:
        """Whether the table has the pgvector column (PostgreSQL with the
        extension at migration time)."""
        if self._pgvector is None:
            self._pgvector = False
            if self._db.backend == "postgresql":
                async with self._db.session() as session:
                    found = await session.execute(
                        text(
                            "SELECT 1 FROM information_schema.columns WHERE table_name = "
                            "'semantic_memories' AND column_name = 'embedding_vector'"
                        )
                    )
                    self._pgvector = found.first() is not None
        return self._pgvector

    async def _store_pg_vector(self, tenant: str, memory_id: str, vector: Vectors) -> None:
        async with self._db.session() as session:
            await session.execute(
                text(
                    "UPDATE semantic_memories SET embedding_vector = CAST(:v AS vector) "
                    "WHERE tenant = :t AND id = :i"
                ),
                {"v": _pg_literal(vector), "t": tenant, "i": memory_id},
            )

    async def pg_search(self, tenant: str, query: VectorQuery) -> list[tuple[str, float]]:
        """(id, cosine similarity) of the nearest memories, by pgvector."""
        name, version = query.embedder
        conditions = ["tenant = :t", "embedder = :n", "embedder_version = :v"]
        params: dict[str, Any] = {"t": tenant, "n": name, "v": version}
        for column in ("agent_id", "session_id", "room_id"):
            if getattr(query.scope, column):
                conditions.append(f"{column} = :{column}")
                params[column] = getattr(query.scope, column)
        if not query.include_superseded:
            conditions.append("superseded_by = ''")
        params["q"], params["k"] = _pg_literal(query.vector), query.limit
        statement = text(
            "SELECT id, 1 - (embedding_vector <=> CAST(:q AS vector)) AS score "
            f"FROM semantic_memories WHERE {' AND '.join(conditions)} "
            "ORDER BY embedding_vector <=> CAST(:q AS vector) LIMIT :k"
        )
        async with self._db.session() as session:
            rows = (await session.execute(statement, params)).all()
        return [(r[0], float(r[1])) for r in rows]


def _pg_literal(vector: Vectors) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector).ravel()) + "]"


def _row(tenant: str, memory: Memory, vector: Vectors) -> SemanticMemoryRow:
    array = np.asarray(vector, dtype="<f4").ravel()
    return SemanticMemoryRow(
        tenant=tenant,
        id=memory.id,
        text=memory.text,
        metadata_=memory.metadata,
        agent_id=memory.scope.agent_id,
        session_id=memory.scope.session_id,
        room_id=memory.scope.room_id,
        source_run_id=memory.source.run_id,
        source_session_id=memory.source.session_id,
        source_message_id=memory.source.message_id,
        source_tool_call_id=memory.source.tool_call_id,
        source_working_entry_id=memory.source.working_memory_entry_id,
        embedder=memory.embedder,
        embedder_version=memory.embedder_version,
        dimensions=int(array.shape[0]),
        embedding=array.tobytes(),
        superseded_by=memory.superseded_by,
        consolidated_from=list(memory.consolidated_from),
        create_time=memory.create_time,
    )


def _to_memory(row: SemanticMemoryRow) -> Memory:
    return Memory(
        id=row.id,
        text=row.text,
        metadata=dict(row.metadata_),
        scope=Scope(row.agent_id, row.session_id, row.room_id),
        source=MemorySource(
            run_id=row.source_run_id,
            session_id=row.source_session_id,
            message_id=row.source_message_id,
            tool_call_id=row.source_tool_call_id,
            working_memory_entry_id=row.source_working_entry_id,
        ),
        embedder=row.embedder,
        embedder_version=row.embedder_version,
        create_time=as_utc(row.create_time),
        superseded_by=row.superseded_by,
        consolidated_from=tuple(row.consolidated_from),
    )
