"""Rooms across replicas: two `aster serve` processes share PostgreSQL and
Redis; a room followed on replica B sees, live and in order, what happens
through replica A (messages Said there, a collaboration run there), and
resumes on B from a cursor."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from aster.v1 import agent_pb2_grpc, room_pb2, room_pb2_grpc, run_pb2
from tests.e2e.rooms_helpers import SYSTEM, WORKER, agent, collect, messages, room
from tests.processes import Ports, Process, stack_env, wait_grpc_healthy
from tests.unit.storage.conftest import _reset_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TERMINAL = (run_pb2.RUN_STATUS_COMPLETED, run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_CANCELLED)
# Live events reach a follower through the bus; a missed one would only be
# found by the idle re-check of the store (streams.log.IDLE_CHECK_S, 10 s).
# Everything here must arrive well before that.
LIVE_WITHIN_S = 3.0


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[Ports]]:
    """Two replicas on one migrated PostgreSQL database and one Redis."""
    asyncio.run(_reset_postgres(postgres_url))
    env = {
        "ASTER_DATABASE_URL": postgres_url,
        "ASTER_REDIS_URL": redis_url,
        "ASTER_AUTO_MIGRATE": "false",
        "ASTER_LOG_LEVEL": "warning",
    }
    ports = [Ports(), Ports()]
    upgrade = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "db", "upgrade"],
        env=stack_env(ports[0], tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    started: list[Process] = []
    try:
        # Both start at once (start_server would wait for each in turn).
        for index, replica in enumerate(ports):
            started.append(
                Process(
                    f"server-{replica.grpc}",
                    [sys.executable, "-m", "aster.server.cli", "serve"],
                    stack_env(replica, tmp_path / f"r{index}", **env),
                    tmp_path / f"r{index}" / "logs",
                )
            )
        for process, replica in zip(started, ports, strict=True):
            wait_grpc_healthy(process, replica.grpc)
        yield ports
    finally:
        for process in started:
            process.stop()
        asyncio.run(_reset_postgres(postgres_url))


@pytest.fixture
async def channels(replicas: list[Ports]) -> AsyncIterator[list[grpc.aio.Channel]]:
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].grpc}") as a,
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].grpc}") as b,
    ):
        yield [a, b]


async def test_a_room_followed_on_b_sees_live_what_happens_through_a(
    channels: list[grpc.aio.Channel],
) -> None:
    agents_a = agent_pb2_grpc.AgentServiceStub(channels[0])
    rooms_a = room_pb2_grpc.RoomServiceStub(channels[0])
    rooms_b = room_pb2_grpc.RoomServiceStub(channels[1])
    first = await agent(agents_a, "one two three", delay_ms=20)
    second = await agent(agents_a, "four five six", delay_ms=20)
    made = await room(rooms_a, [(first, WORKER), (second, WORKER)], humans=("alice",))
    joined = 3  # one join event per member

    received: list[tuple[float, room_pb2.RoomEvent]] = []
    run_id: list[str] = []
    finished = asyncio.Event()
    arrived = asyncio.Condition()

    async def follow_on_b() -> None:
        stream = rooms_b.StreamRoom(room_pb2.StreamRoomRequest(room_id=made.id, after_seq=joined))
        async for event in stream:
            async with arrived:
                received.append((time.time(), event))
                arrived.notify_all()
            update = event.run_update
            if run_id and update.id == run_id[0] and update.status in TERMINAL:
                finished.set()
                return

    follower = asyncio.create_task(follow_on_b())
    try:
        await asyncio.sleep(0.5)  # the stream on B is open and following
        for text in ("hello", "anyone there?", f"@{first} start please"):
            said = await rooms_a.Say(
                room_pb2.SayRequest(room_id=made.id, participant_id="alice", text=text)
            )
            # Each message reaches B live, before the next one is said.
            async with asyncio.timeout(LIVE_WITHIN_S), arrived:
                await arrived.wait_for(lambda seq=said.seq: any(e.seq == seq for _, e in received))
        run = await rooms_a.RunRoom(
            room_pb2.RunRoomRequest(room_id=made.id, task="count", max_turns=2)
        )
        run_id.append(run.id)
        async with asyncio.timeout(20):
            await finished.wait()
    finally:
        follower.cancel()
    events = [e for _, e in received]
    # In order, with no gap and no duplicate, from the cursor on.
    assert [e.seq for e in events] == list(range(joined + 1, joined + 1 + len(events)))
    assert messages(events) == [
        ("alice", "hello"),
        ("alice", "anyone there?"),
        ("alice", f"@{first} start please"),
        (SYSTEM, "count"),
        (first, "one two three"),
        (second, "four five six"),
    ]
    kinds = [str(e.WhichOneof("event")) for e in events]
    assert kinds.count("turn_change") == 2 and kinds.count("typing") == 2
    deltas = "".join(e.delta.delta for e in events if e.WhichOneof("event") == "delta")
    assert deltas == "one two threefour five six"
    updates = [e.run_update for e in events if e.WhichOneof("event") == "run_update"]
    assert [(u.id, u.status) for u in updates] == [
        (run.id, run_pb2.RUN_STATUS_RUNNING),
        (run.id, run_pb2.RUN_STATUS_COMPLETED),
    ]
    # Live: every event reached B soon after A stored it (same machine, same
    # clock), not at the next idle re-check of the store.
    late = [
        (e.seq, round(t - e.create_time.ToMicroseconds() / 1e6, 3))
        for t, e in received
        if t - e.create_time.ToMicroseconds() / 1e6 > LIVE_WITHIN_S
    ]
    assert not late, late

    # Resume on B from the middle of the collaboration: exactly the rest.
    middle = events[len(events) // 2].seq
    rest = await collect(rooms_b, made.id, middle, run.id)
    assert [e.seq for e in rest] == [e.seq for e in events if e.seq > middle]
    assert rest == [e for e in events if e.seq > middle]
    # The run, read on B, is the one A started and finished.
    on_b = await rooms_b.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=made.id, id=run.id))
    assert (on_b.status, on_b.turns, on_b.result) == (
        run_pb2.RUN_STATUS_COMPLETED,
        2,
        "four five six",
    )
