"""RoomRepository on SQLite and PostgreSQL: rows and their stream events
stored together, tenant scoping, run leases."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from aster.server.clock import utcnow
from aster.server.errors import AlreadyExists, FailedPrecondition, NotFound
from aster.server.rooms.events import member_data, message_data, run_data
from aster.server.rooms.models import (
    Member,
    Room,
    RoomMessage,
    RoomRole,
    RoomRun,
    RoomSpec,
    RoomStrategy,
    Speaker,
    stream_name,
)
from aster.server.runs.models import RunStatus
from aster.server.storage.database import Database
from aster.server.storage.room_repository import RoomRepository
from aster.server.storage.stream_repository import StreamRepository


def _room(room_id: str) -> Room:
    now = utcnow()
    members = [
        Member(Speaker(agent_id="agt_a"), RoomRole.LEADER, now),
        Member(Speaker("", "ann"), RoomRole.WORKER, now),
    ]
    return Room(room_id, RoomSpec("r", members), now, now)


async def test_messages_take_the_seq_of_their_event(database: Database) -> None:
    rooms, streams = RoomRepository(database), StreamRepository(database)
    room = _room("room_1")
    joins = await rooms.create("t1", room, [("join", member_data(m)) for m in room.spec.members])
    assert [e.seq for e in joins] == [1, 2]
    with pytest.raises(AlreadyExists):
        await rooms.create("t1", room, [])
    said = RoomMessage("room_1", 0, Speaker("", "ann"), "hi @agt_a", ("agt_a",))
    stored, events = await rooms.add_message("t1", said, message_data(said))
    assert stored.seq == events[0].seq == 3
    page, more = await rooms.messages_page("t1", "room_1", 0, 10)
    assert (page, more) == ([stored], False)
    assert [e.kind for e in await streams.read("t1", stream_name("room_1"), 0, 10)] == [
        "join",
        "join",
        "message",
    ]
    # Another tenant sees none of it.
    with pytest.raises(NotFound):
        await rooms.get("t2", "room_1")
    with pytest.raises(NotFound):
        await rooms.messages_page("t2", "room_1", 0, 10)


async def test_members_join_and_leave_bump_the_revision(database: Database) -> None:
    rooms = RoomRepository(database)
    await rooms.create("t1", _room("room_2"), [])
    bob = Member(Speaker("", "bob"), RoomRole.OBSERVER, utcnow())
    await rooms.add_member("t1", "room_2", bob, ("join", member_data(bob)))
    with pytest.raises(AlreadyExists):
        await rooms.add_member("t1", "room_2", bob, ("join", member_data(bob)))
    room = await rooms.get("t1", "room_2")
    assert [m.who.key for m in room.spec.members] == ["agt_a", "ann", "bob"]
    assert room.revision == 2
    await rooms.remove_member("t1", "room_2", Speaker("", "ann"), utcnow(), ("leave", {}))
    with pytest.raises(NotFound):
        await rooms.remove_member("t1", "room_2", Speaker("", "ann"), utcnow(), ("leave", {}))
    page, more = await rooms.members_page("t1", "room_2", -1, 1)
    assert [m.who.key for _, m in page] == ["agt_a"] and more


async def test_run_updates_stop_once_it_ended_and_lapsed_leases_are_found(
    database: Database,
) -> None:
    rooms = RoomRepository(database)
    await rooms.create("t1", _room("room_3"), [])
    now = utcnow()
    run = RoomRun(
        "rrun_1",
        "room_3",
        "task",
        RoomStrategy.ROUND_ROBIN,
        3,
        "",
        RunStatus.RUNNING,
        now,
        owner="w1",
    )
    await rooms.create_run("t1", run, 0.01, ("run_update", run_data(run)))
    assert (await rooms.active_run("t1", "room_3")) is not None
    lapsed = await rooms.lapsed_runs(now + timedelta(seconds=1))
    assert [(t, r.id) for t, r in lapsed] == [("t1", "rrun_1")]
    await rooms.renew("w1", ["rrun_1"], now + timedelta(seconds=60))
    assert await rooms.lapsed_runs(now + timedelta(seconds=1)) == []
    run.status, run.turns = RunStatus.CANCELLED, 1
    assert await rooms.update_run("t1", run, ("run_update", run_data(run)))
    run.status = RunStatus.COMPLETED
    assert await rooms.update_run("t1", run, None) is None
    stored = await rooms.get_run("t1", "room_3", "rrun_1")
    assert (stored.status, stored.turns) == (RunStatus.CANCELLED, 1)
    assert await rooms.active_run("t1", "room_3") is None
    await rooms.delete("t1", "room_3", None)
    with pytest.raises(NotFound):
        await rooms.get_run("t1", "room_3", "rrun_1")


async def test_one_active_run_per_room_even_when_replicas_race(database: Database) -> None:
    """Five replicas (each its own engine on the same database) start a run
    in one room at once: exactly one is stored; the others get
    FAILED_PRECONDITION naming the winner, and no event of theirs is kept."""
    rooms = RoomRepository(database)
    await rooms.create("t1", _room("room_race"), [])
    replicas = [Database(database.url) for _ in range(5)]
    try:
        now = utcnow()
        runs = [
            RoomRun(
                f"rrun_{i}",
                "room_race",
                "task",
                RoomStrategy.ROUND_ROBIN,
                3,
                "",
                RunStatus.RUNNING,
                now,
                owner=f"w{i}",
            )
            for i in range(5)
        ]
        results = await asyncio.gather(
            *(
                RoomRepository(replica).create_run("t1", run, 30, ("run_update", run_data(run)))
                for replica, run in zip(replicas, runs, strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        for replica in replicas:
            await replica.close()
    won = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert len(lost) == 4 and all(isinstance(r, FailedPrecondition) for r in lost), lost
    winner = f"rrun_{won[0]}"
    assert all(f"already has a collaboration running ({winner})" in str(r) for r in lost)
    active = await rooms.active_run("t1", "room_race")
    assert active is not None and active.id == winner
    events = await StreamRepository(database).read("t1", stream_name("room_race"), 0, 100)
    assert [e.data["id"] for e in events if e.kind == "run_update"] == [winner]
    for i in range(5):
        if i != won[0]:
            with pytest.raises(NotFound):
                await rooms.get_run("t1", "room_race", f"rrun_{i}")
    # Once it ends, the room takes a new run; another room was never blocked.
    ended = runs[won[0]]
    ended.status = RunStatus.COMPLETED
    assert await rooms.update_run("t1", ended, None) == []
    again = dataclasses.replace(runs[0], id="rrun_again")
    await rooms.create_run("t1", again, 30, ("run_update", run_data(again)))
    await rooms.create("t1", _room("room_other"), [])
    other = dataclasses.replace(runs[1], id="rrun_other", room_id="room_other")
    await rooms.create_run("t1", other, 30, ("run_update", run_data(other)))
    # The same room id in another tenant is another room.
    await rooms.create("t2", _room("room_race"), [])
    await rooms.create_run("t2", dataclasses.replace(runs[2], id="rrun_t2"), 30, ("x", {}))
