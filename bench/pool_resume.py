"""Pool resume latency: a cold start against a warm hit, through `aster serve`.

Starts a fresh `aster serve` (SQLite in a temporary directory, or the
PostgreSQL of --database-url) with ASTER_POOL_MAX_AGENTS=1, and measures
unary RunAgent calls of scripted agents, each in a session that already holds
--history messages:

  warm hit     one pooled agent, run after run: it stays live (resolved
               configuration, warm provider client, cached session context
               checked with one aggregate query);
  cold start   two pooled agents in turn: with room for one, each run evicts
               the other (its state is written to pool_agents), then warms its
               own agent (agent read, provider client, the session's context
               re-read) before the model call;
  outside      a plain agent, resolved on every run,
               for reference.

It prints, per case, the client-side RunAgent latency (p50/p99, ms) and, for
the pooled cases, the server's own warm-up time (GetPoolStats
resume_latency_p50/p99_ms, i.e. the pool's part of a cold start alone).

Then the same three cases in process, without the run around them (the
pool's own classes on the same kind of database): the time from asking the
pool for the agent to holding its session context, which is what a run waits
for before its first model call. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from harness import (
    GRPC_OPTIONS,
    HOST,
    BenchError,
    aster_server,
    log,
    machine,
    percentile,
    run_bench,
)

from aster.server.agents.models import AgentSpec
from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.ids import new_id
from aster.server.pools.context import SessionContextLoader
from aster.server.pools.models import PoolSettings
from aster.server.pools.pool import AgentPool
from aster.server.pools.service import PoolService
from aster.server.providers.registry import ProviderRegistry
from aster.server.sessions.models import Message, Session, SessionSpec
from aster.server.storage import migrate
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.storage.pool_repository import PoolRepository
from aster.server.storage.session_repository import SessionRepository
from aster.v1 import agent_pb2, agent_pb2_grpc, pool_pb2, pool_pb2_grpc, run_pb2

COMPLETED = run_pb2.RUN_STATUS_COMPLETED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="measured runs per case")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured runs per case")
    parser.add_argument("--history", type=int, default=40, help="messages in each session")
    parser.add_argument("--database-url", default="", help="ASTER_DATABASE_URL (default SQLite)")
    parser.add_argument("--output", type=Path, help="also write the report to a file")
    return parser.parse_args(argv)


class Client:
    """Blocking stubs of one server."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS)
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.pools = pool_pb2_grpc.PoolServiceStub(self.channel)

    def agent(self, pooled: bool) -> str:
        """A scripted agent (echo), pooled or not."""
        agent = agent_pb2.Agent(
            display_name="bench pool", model=agent_pb2.ModelConfig(provider="scripted")
        )
        if pooled:
            request = pool_pb2.CreatePooledAgentRequest(agent=agent)
            return str(self.pools.CreatePooledAgent(request, timeout=30).agent_id)
        created = self.agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), timeout=10)
        return str(created.id)

    def run(self, agent_id: str, session_id: str, text: str) -> str:
        """One RunAgent call; returns its session."""
        reply = self.agents.RunAgent(
            agent_pb2.RunAgentRequest(agent_id=agent_id, message=text, session_id=session_id),
            timeout=60,
        )
        if reply.run.status != COMPLETED:
            raise BenchError(f"a run ended {reply.run.status}: {reply.run.error}")
        return str(reply.run.session_id)

    def session(self, agent_id: str, history: int) -> str:
        """A session of `agent_id` holding about `history` messages."""
        session_id = ""
        for turn in range(max(1, history // 2)):
            session_id = self.run(agent_id, session_id, f"turn {turn}: tell me something")
        return session_id

    def stats(self) -> pool_pb2.PoolStats:
        """The pool's figures."""
        return self.pools.GetPoolStats(pool_pb2.GetPoolStatsRequest(), timeout=10)


def timed(runs: int, call: Callable[[int], None]) -> list[float]:
    """Milliseconds of each of `runs` calls, sorted."""
    times = []
    for i in range(runs):
        began = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - began) * 1000)
    return sorted(times)


def run(args: argparse.Namespace, work: Path) -> list[str]:
    """Runs the three cases on one fresh server; returns the report."""
    rows: list[str] = []
    with aster_server(
        work,
        args.database_url,
        ASTER_POOL_MAX_AGENTS="1",
        ASTER_POOL_IDLE_S="3600",
        ASTER_POOL_ADMISSION_TIMEOUT_S="30",
        ASTER_RATE_LIMIT_RPS="100000",
        ASTER_RATE_LIMIT_BURST="100000",
    ) as port:
        client = Client(port)
        log("creating agents")
        plain = client.agent(pooled=False)
        first, second = client.agent(pooled=True), client.agent(pooled=True)
        # Each case alternates between two sessions that start with
        # --history messages, so every session grows alike (2 per run of it).
        cases: list[tuple[str, list[tuple[str, str]], bool]] = [
            ("warm hit", [(first, ""), (first, "")], True),
            ("cold start", [(first, ""), (second, "")], True),
            ("outside the pool", [(plain, ""), (plain, "")], False),
        ]
        for title, pairs, pooled in cases:
            log(f"case: {title}: building sessions")
            pairs = [(agent, client.session(agent, args.history)) for agent, _ in pairs]

            def call(i: int, pairs: list[tuple[str, str]] = pairs) -> None:
                agent, session = pairs[i % 2]
                client.run(agent, session, f"run {i}")

            # Same starting point for every case: `first` live.
            client.run(first, pairs[0][1] if pairs[0][0] == first else "", "settle")
            timed(args.warmup, call)
            before = client.stats()
            log(f"case: {title}: measuring")
            times = timed(args.runs, call)
            after = client.stats()
            hits, colds = after.hits - before.hits, after.cold_starts - before.cold_starts
            warm = (
                f"{after.resume_latency_p50_ms:.2f} / {after.resume_latency_p99_ms:.2f}"
                if pooled and colds
                else "-"
            )
            rows.append(
                f"| {title} | {args.runs} | {percentile(times, 50):.1f} | "
                f"{percentile(times, 99):.1f} | {hits} | {colds} | {warm} |"
            )
        client.channel.close()
    backend = "PostgreSQL" if args.database_url else "SQLite"
    return [
        f"### Pool resume latency ({backend}, sessions of ~{args.history} messages)",
        "",
        *machine(),
        "",
        "| case | runs | RunAgent p50 ms | RunAgent p99 ms | hits | cold starts "
        "| server warm-up p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


async def in_process(args: argparse.Namespace, work: Path) -> list[str]:
    """The pool's part alone: acquire the agent and its session context."""
    url = args.database_url or f"sqlite+aiosqlite:///{work / 'inproc.db'}"
    database = Database(url)
    await migrate.upgrade(database)
    agents = AgentService(AgentRepository(database))
    sessions = SessionRepository(database)
    repo = PoolRepository(database)
    pool = AgentPool(
        repo,
        agents,
        SessionContextLoader(sessions, repo),
        ProviderRegistry(work),
        PoolSettings(max_agents=1, idle_s=3600, admission_timeout_s=30),
    )
    service = PoolService(repo, pool, agents)
    tenant = f"bench-{new_id('t')[-8:]}"

    async def agent(pooled: bool) -> str:
        created = await agents.create(tenant, AgentSpec(display_name="bench"))
        if pooled:
            await service.create(tenant, created.id, None)
        return created.id

    async def session(agent_id: str) -> str:
        now = utcnow()
        made = await sessions.create(
            tenant,
            Session(
                id=new_id("ses"),
                spec=SessionSpec(agent_id=agent_id),
                create_time=now,
                update_time=now,
            ),
        )
        for i in range(args.history):
            await sessions.append_message(
                tenant,
                Message(
                    id=new_id("msg"),
                    session_id=made.id,
                    role="user" if i % 2 == 0 else "assistant",
                    content=f"message {i} " * 20,
                    create_time=utcnow(),
                ),
            )
        return made.id

    plain, first, second = await agent(False), await agent(True), await agent(True)
    pairs = {
        "warm hit": [(first, await session(first))] * 2,
        "cold start": [(first, await session(first)), (second, await session(second))],
        "outside the pool": [(plain, await session(plain))] * 2,
    }
    rows = []
    for title, cases in pairs.items():
        times = []
        for i in range(args.warmup + args.runs):
            agent_id, session_id = cases[i % 2]
            began = time.perf_counter()
            async with pool.acquire(tenant, agent_id) as live:
                context = await live.context(session_id)
            took = (time.perf_counter() - began) * 1000
            assert len(context.messages) == args.history
            if i >= args.warmup:
                times.append(took)
        times.sort()
        rows.append(
            f"| {title} | {args.runs} | {percentile(times, 50):.2f} | {percentile(times, 99):.2f} |"
        )
    await pool.close()
    await database.close()
    return [
        "",
        "In process (the pool's part of a run: agent and session context ready):",
        "",
        "| case | runs | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; stops the server however the run ends."""
    args = parse_args(argv)

    def measure(work: Path) -> list[str]:
        report = run(args, work)
        log("in process")
        return report + asyncio.run(in_process(args, work))

    return run_bench("aster-bench-pool-", measure, output=args.output)


if __name__ == "__main__":
    sys.exit(main())
