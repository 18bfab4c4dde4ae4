"""Streaming one agent reply into a room against the same reply through a
plain agent Chat, through `aster serve`.

Starts a fresh `aster serve` (SQLite in a temporary directory, or the
PostgreSQL of --database-url) and one scripted agent whose reply is --words
words with no delay (one text delta per word). Then, alternating, --runs
times each:

  chat   AgentService/Chat with the agent, read to its last event (a run:
         its events go through the run EventLog's single writer task, which
         batches what is queued into one transaction);
  room   RoomService/RunRoom (round_robin, max_turns 1) in a fresh room
         whose only member is the agent, then StreamRoom with the run's id
         until its final run_update (typing, one delta per word, the
         message and the run's end go into the room's durable stream).

It prints, per case, the client-side time from the call to the last event
(p50/p99, ms) and the span between the first and the last text delta as
stored by the server (their `create_time`s, p50, ms): the cost of the deltas
alone. See bench/README.md ("Rooms").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
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

from aster.v1 import agent_pb2, agent_pb2_grpc, room_pb2, room_pb2_grpc, run_pb2

COMPLETED = run_pb2.RUN_STATUS_COMPLETED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="measured replies per case")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured replies per case")
    parser.add_argument("--words", type=int, default=200, help="words (deltas) in the reply")
    parser.add_argument("--database-url", default="", help="ASTER_DATABASE_URL (default SQLite)")
    parser.add_argument("--output", type=Path, help="also write the report to a file")
    return parser.parse_args(argv)


def _seconds(stamp: object) -> float:
    return float(stamp.ToMicroseconds()) / 1e6  # type: ignore[attr-defined]


class Client:
    """Blocking stubs of one server."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS)
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.rooms = room_pb2_grpc.RoomServiceStub(self.channel)

    def agent(self, words: int) -> str:
        """A scripted agent replying `words` words at once."""
        params = struct_pb2.Struct()
        text = " ".join(f"w{i}" for i in range(words))
        params.update({"token_delay_ms": 0, "script": [{"text": text}]})
        agent = agent_pb2.Agent(
            display_name="bench room",
            model=agent_pb2.ModelConfig(provider="scripted", params=params),
        )
        return str(self.agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent)).id)

    def chat(self, agent_id: str) -> tuple[float, float]:
        """One Chat: (ms to its last event, ms between first and last delta)."""
        began = time.perf_counter()
        events = list(
            self.agents.Chat(agent_pb2.ChatRequest(agent_id=agent_id, message="go"), timeout=60)
        )
        took = (time.perf_counter() - began) * 1000
        deltas = [e.create_time for e in events if e.WhichOneof("event") == "text_delta"]
        if not deltas:
            raise BenchError(f"a chat streamed no text delta: {events[-1:]}")
        return took, (_seconds(deltas[-1]) - _seconds(deltas[0])) * 1000

    def room(self, agent_id: str) -> tuple[float, float]:
        """One RunRoom followed to its end: the same two figures."""
        made = self.rooms.CreateRoom(
            room_pb2.CreateRoomRequest(
                room=room_pb2.Room(
                    display_name="bench", members=[room_pb2.RoomMember(agent_id=agent_id)]
                )
            ),
            timeout=10,
        )
        began = time.perf_counter()
        run = self.rooms.RunRoom(
            room_pb2.RunRoomRequest(room_id=made.id, task="go", max_turns=1), timeout=10
        )
        events = list(
            self.rooms.StreamRoom(
                room_pb2.StreamRoomRequest(room_id=made.id, after_seq=1, room_run_id=run.id),
                timeout=60,
            )
        )
        took = (time.perf_counter() - began) * 1000
        final = events[-1].run_update
        if final.status != COMPLETED:
            raise BenchError(f"a room run ended {final.status}: {final.error}")
        deltas = [e.create_time for e in events if e.WhichOneof("event") == "delta"]
        return took, (_seconds(deltas[-1]) - _seconds(deltas[0])) * 1000


def run(args: argparse.Namespace, work: Path) -> list[str]:
    """Measures both cases on one fresh server; returns the report."""
    with aster_server(
        work, args.database_url, ASTER_RATE_LIMIT_RPS="100000", ASTER_RATE_LIMIT_BURST="100000"
    ) as port:
        client = Client(port)
        agent_id = client.agent(args.words)
        cases = {"chat": client.chat, "room": client.room}
        for name, call in cases.items():
            log(f"warming up: {name}")
            for _ in range(args.warmup):
                call(agent_id)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        log("measuring")
        for _ in range(args.runs):
            for name, call in cases.items():
                results[name].append(call(agent_id))
        client.channel.close()
    rows = []
    for name, figures in results.items():
        totals = sorted(t for t, _ in figures)
        spans = sorted(s for _, s in figures)
        rows.append(
            f"| {name} | {args.runs} | {percentile(totals, 50):.1f} | "
            f"{percentile(totals, 99):.1f} | {percentile(spans, 50):.1f} |"
        )
    backend = "PostgreSQL" if args.database_url else "SQLite"
    return [
        f"### One {args.words}-word reply: room against Chat ({backend})",
        "",
        *machine(),
        "",
        "| case | replies | call to last event p50 ms | p99 ms | first to last delta p50 ms |",
        "|---|---|---|---|---|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; stops the server however the run ends."""
    args = parse_args(argv)
    return run_bench("aster-bench-room-", lambda work: run(args, work), output=args.output)


if __name__ == "__main__":
    sys.exit(main())
