"""Semantic memory: search latency at 10k and 100k memories on SQLite and
PostgreSQL, and the local embedder's throughput.

Search goes through SemanticMemoryService.search (exact numpy search over the
cached per-tenant matrix, then the rows of the hits read back), in process.
The corpora are synthetic: random unit vectors of 384 dimensions (the local
embedder's), bulk-inserted, so that 100k memories load in seconds; the query
vectors are random too, and their embedding time is measured apart (the
local embedder on one query). Prints a markdown table; see bench/README.md.

    .venv/bin/python bench/memory_search.py
    .venv/bin/python bench/memory_search.py --sizes 10000 --backends sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from harness import percentile
from sqlalchemy import MetaData, insert, text

from aster.server.memory.embedders.base import Embedder, Vectors, normalized
from aster.server.memory.embedders.local import LocalEmbedder, local_embedder_installed
from aster.server.memory.semantic_models import Scope, SearchQuery
from aster.server.memory.semantic_service import SemanticMemoryService
from aster.server.memory.vector_index import AutoVectorIndex
from aster.server.storage import migrate
from aster.server.storage.database import Database
from aster.server.storage.semantic_memory_repository import (
    SemanticMemoryRepository,
    embedder_key,
)
from aster.server.storage.semantic_memory_tables import (
    SemanticMemoryGenerationRow,
    SemanticMemoryRow,
)

DIMENSIONS = 384
AGENTS = 100
INSERT_CHUNK = 5000


class RandomEmbedder(Embedder):
    """Random unit vectors: stands in for the model in search timings."""

    name = "bench-random"
    version = "1"

    def __init__(self, seed: int) -> None:
        self._random = np.random.default_rng(seed)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return normalized(self._random.standard_normal((len(texts), DIMENSIONS)))


async def reset(database: Database) -> None:
    """Drops every table of a PostgreSQL database (SQLite runs on a new file)."""
    if database.backend != "postgresql":
        return
    async with database.engine.begin() as conn:
        metadata = MetaData()
        await conn.run_sync(metadata.reflect)
        for table in metadata.tables:
            await conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))


async def fill(database: Database, tenant: str, count: int, seed: int) -> float:
    """Bulk-inserts `count` memories with random vectors; returns seconds."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    now = datetime.now(UTC)
    for start in range(0, count, INSERT_CHUNK):
        size = min(INSERT_CHUNK, count - start)
        vectors = normalized(rng.standard_normal((size, DIMENSIONS))).astype("<f4")
        rows = [
            {
                "tenant": tenant,
                "id": f"mem-{start + i}",
                "text": f"synthetic memory {start + i}",
                "metadata_": {},
                "agent_id": f"agt-{(start + i) % AGENTS}",
                "session_id": "",
                "room_id": "",
                "source_run_id": "",
                "source_session_id": "",
                "source_message_id": "",
                "source_tool_call_id": "",
                "source_working_entry_id": "",
                "embedder": RandomEmbedder.name,
                "embedder_version": RandomEmbedder.version,
                "dimensions": DIMENSIONS,
                "embedding": vectors[i].tobytes(),
                "superseded_by": "",
                "consolidated_from": [],
                "create_time": now,
            }
            for i in range(size)
        ]
        async with database.session() as session:
            await session.execute(insert(SemanticMemoryRow), rows)
    async with database.session() as session:
        session.add(
            SemanticMemoryGenerationRow(
                tenant=tenant,
                embedder_key=embedder_key(RandomEmbedder.name, RandomEmbedder.version),
                generation=1,
            )
        )
    return time.perf_counter() - started


async def measure(url: str, backend: str, sizes: list[int], queries: int) -> list[str]:
    database = Database(url)
    await reset(database)
    await migrate.upgrade(database)
    rows = []
    try:
        for size in sizes:
            tenant = f"bench-{size}"
            load_s = await fill(database, tenant, size, seed=size)
            repository = SemanticMemoryRepository(database)
            service = SemanticMemoryService(
                repository, RandomEmbedder(seed=1), AutoVectorIndex(repository)
            )
            started = time.perf_counter()
            await service.search(tenant, SearchQuery(query="warm", top_k=10))
            cold_ms = (time.perf_counter() - started) * 1000
            for label, scope in (("tenant", Scope()), ("one agent", Scope(agent_id="agt-7"))):
                timings = []
                for _ in range(queries):
                    started = time.perf_counter()
                    hits = await service.search(
                        tenant, SearchQuery(query="q", top_k=10, scope=scope)
                    )
                    timings.append((time.perf_counter() - started) * 1000)
                    assert len(hits) == 10
                rows.append(
                    f"| {backend} | {size:,} | {label} | {statistics.median(timings):.1f} | "
                    f"{percentile(sorted(timings), 99):.1f} | {cold_ms:.0f} | {load_s:.1f} |"
                )
                print(rows[-1], flush=True)
    finally:
        await reset(database)
        await database.close()
    return rows


async def embedding_rows(count: int) -> list[str]:
    if not local_embedder_installed():
        return ["| local | (the 'embed' extra is not installed) | | |"]
    embedder = LocalEmbedder()
    started = time.perf_counter()
    await embedder.warm()
    load_s = time.perf_counter() - started
    texts = [
        f"memory number {i}: the user mentioned topic {i % 37} in passing" for i in range(count)
    ]
    single = []
    for text_ in texts[:50]:
        started = time.perf_counter()
        await embedder.embed([text_])
        single.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    await embedder.embed(texts)
    batch_s = time.perf_counter() - started
    await embedder.aclose()
    return [
        f"| local (all-MiniLM-L6-v2, CPU) | {count / batch_s:.0f} texts/s "
        f"(batches of 64) | {statistics.median(single):.1f} ms p50, "
        f"{percentile(sorted(single), 99):.1f} ms p99 | {load_s:.1f} s |"
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-texts", type=int, default=1024)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "ASTER_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/aster_bench"
        ),
        help="a database the benchmark may wipe",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| backend | memories | scope | search p50 ms | p99 ms | first search ms | insert s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            url = (
                f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
                if backend == "sqlite"
                else args.postgres_url
            )
            await measure(url, backend, sizes, args.queries)
    print()
    print("| embedder | throughput | one query | model load |")
    print("|---|---|---|---|")
    for row in await embedding_rows(args.embed_texts):
        print(row)


if __name__ == "__main__":
    asyncio.run(main())
