"""Working memory through the real server over gRPC: latency (p50/p99) and
throughput of SetWorkingMemory (new keys, and upserts of one key),
GetWorkingMemoryEntry, a compare-and-set loop, and ListWorkingMemoryEntries
(a 50-entry page of a prefix among 1,000 keys), on SQLite or PostgreSQL.

    .venv/bin/python bench/working_memory.py                       # SQLite
    .venv/bin/python bench/working_memory.py --database-url postgresql+asyncpg://...

Prints a markdown table; see bench/README.md, section "Working memory"."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from harness import (
    HOST,
    aster_server,
    machine,
    percentile,
    run_bench,
)

from aster.v1 import agent_pb2, agent_pb2_grpc, memory_pb2, memory_pb2_grpc


def entry(key: str, value: object, agent_id: str, etag: str = "") -> memory_pb2.WorkingMemoryEntry:
    message = struct_pb2.Value()
    if isinstance(value, int):
        message.number_value = value
    else:
        message.string_value = str(value)
    return memory_pb2.WorkingMemoryEntry(key=key, value=message, agent_id=agent_id, etag=etag)


async def measure(
    name: str, calls: int, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> list[str]:
    """Runs `call(i)` for i in range(calls), `concurrency` at a time; one table row."""
    latencies: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for index in queue:
            started_at = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started_at)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return [
        name,
        str(concurrency),
        str(calls),
        f"{calls / elapsed:,.0f}",
        f"{percentile(latencies, 50) * 1000:.2f}",
        f"{percentile(latencies, 99) * 1000:.2f}",
    ]


async def bench(port: int, calls: int, concurrency: int) -> list[list[str]]:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        agent = await agents.CreateAgent(
            agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="bench"))
        )
        aid = agent.id
        ids: list[str] = []

        async def set_new(i: int) -> None:
            made = await memory.SetWorkingMemory(
                memory_pb2.SetWorkingMemoryRequest(entry=entry(f"key/{i:06d}", i, aid))
            )
            ids.append(made.id)

        async def upsert(i: int) -> None:
            await memory.SetWorkingMemory(
                memory_pb2.SetWorkingMemoryRequest(entry=entry("hot", i, aid))
            )

        async def get(i: int) -> None:
            await memory.GetWorkingMemoryEntry(
                memory_pb2.GetWorkingMemoryEntryRequest(id=ids[i % len(ids)])
            )

        etag = [""]

        async def cas(i: int) -> None:
            made = await memory.SetWorkingMemory(
                memory_pb2.SetWorkingMemoryRequest(entry=entry("cas", i, aid, etag[0]))
            )
            etag[0] = made.etag

        for i in range(1000 - calls if calls < 1000 else 0):
            await memory.SetWorkingMemory(
                memory_pb2.SetWorkingMemoryRequest(entry=entry(f"fill/{i:06d}", i, aid))
            )

        async def listing(i: int) -> None:
            page = await memory.ListWorkingMemoryEntries(
                memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=aid, prefix="key/")
            )
            assert len(page.entries) == min(50, len(ids))

        return [
            await measure("Set, new keys", calls, concurrency, set_new),
            await measure("Set, one key (upsert)", calls, concurrency, upsert),
            await measure("Get by id", calls, concurrency, get),
            await measure("Set with etag (CAS chain)", calls, 1, cas),
            await measure("List, 50 of a prefix", calls, concurrency, listing),
        ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; stops the server however the run ends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per operation")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--database-url", default="", help="ASTER_DATABASE_URL; empty: SQLite")
    args = parser.parse_args(argv)

    def report(work: Path) -> list[str]:
        with aster_server(work, args.database_url) as port:
            rows = asyncio.run(bench(port, args.calls, args.concurrency))
        backend = "PostgreSQL" if args.database_url else "SQLite"
        return [
            f"Working memory over gRPC, {backend}, one server process",
            "",
            *machine(),
            "",
            "| operation | in flight | calls | calls/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows),
        ]

    return run_bench("aster-bench-wm-", report)


if __name__ == "__main__":
    sys.exit(main())
