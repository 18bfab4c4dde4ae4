"""RoomService through gRPC: rooms, members, talk, the stream and every
collaboration strategy, with scripted agents."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from aster.v1 import agent_pb2, agent_pb2_grpc, room_pb2, room_pb2_grpc, run_pb2
from tests.conftest import Stack
from tests.e2e.rooms_helpers import (
    LEADER,
    OBSERVER,
    SYSTEM,
    WORKER,
    agent,
    agent_id,
    collect,
    kinds,
    messages,
    room,
    run_to_end,
)
from tests.fakes.model_server import FakeModelServer, FakeToolCall, Reply

COMPLETED = run_pb2.RUN_STATUS_COMPLETED


@pytest.fixture
def stack_under_test(any_stack: Stack) -> Stack:
    """Every test here that uses `channel` or `http` runs on SQLite and on PostgreSQL."""
    return any_stack


@pytest.fixture
def agents(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


@pytest.fixture
def rooms(channel: grpc.aio.Channel) -> room_pb2_grpc.RoomServiceStub:
    return room_pb2_grpc.RoomServiceStub(channel)


async def test_create_get_list_members_join_leave_delete(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    a, b = await agent(agents, "x"), await agent(agents, "y")
    made = await room(rooms, [(a, LEADER), (b, WORKER)], humans=("alice",))
    assert made.id.startswith("room_") and made.etag
    assert [(m.agent_id or m.participant_id, m.role) for m in made.members] == [
        (a, LEADER),
        (b, WORKER),
        ("alice", WORKER),
    ]
    assert (await rooms.GetRoom(room_pb2.GetRoomRequest(id=made.id))) == made
    listed = await rooms.ListRooms(room_pb2.ListRoomsRequest(page_size=1000))
    assert made.id in [r.id for r in listed.rooms]

    joined = await rooms.JoinRoom(
        room_pb2.JoinRoomRequest(room_id=made.id, participant_id="bob", role=OBSERVER)
    )
    assert joined.participant_id == "bob" and joined.join_time.seconds > 0
    page = await rooms.ListMembers(room_pb2.ListMembersRequest(room_id=made.id, page_size=3))
    assert len(page.members) == 3 and page.next_page_token
    rest = await rooms.ListMembers(
        room_pb2.ListMembersRequest(room_id=made.id, page_size=3, page_token=page.next_page_token)
    )
    assert [m.participant_id for m in rest.members] == ["bob"] and not rest.next_page_token
    await rooms.LeaveRoom(room_pb2.LeaveRoomRequest(room_id=made.id, agent_id=b))
    after = await rooms.GetRoom(room_pb2.GetRoomRequest(id=made.id))
    assert [m.agent_id or m.participant_id for m in after.members] == [a, "alice", "bob"]
    assert after.etag != made.etag

    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=made.id, etag=made.etag))
    assert stale.value.code() == grpc.StatusCode.ABORTED
    await rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=made.id, etag=after.etag))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await rooms.GetRoom(room_pb2.GetRoomRequest(id=made.id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_say_mentions_and_paginated_history(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    a = await agent(agents, "x")
    made = await room(rooms, [(a, WORKER)], humans=("alice", "bob"))
    said = await rooms.Say(
        room_pb2.SayRequest(room_id=made.id, participant_id="alice", text=f"hi @{a}, @nobody")
    )
    assert said.mentions == [a] and said.participant_id == "alice" and said.seq > 0
    explicit = await rooms.Say(
        room_pb2.SayRequest(room_id=made.id, agent_id=a, text="hello", mentions=["bob"])
    )
    assert explicit.mentions == ["bob"] and explicit.agent_id == a
    for i in range(3):
        await rooms.Say(room_pb2.SayRequest(room_id=made.id, participant_id="bob", text=f"m{i}"))
    first = await rooms.GetHistory(room_pb2.GetHistoryRequest(room_id=made.id, page_size=3))
    second = await rooms.GetHistory(
        room_pb2.GetHistoryRequest(room_id=made.id, page_size=3, page_token=first.next_page_token)
    )
    texts = [m.text for m in [*first.messages, *second.messages]]
    assert texts == [said.text, "hello", "m0", "m1", "m2"]
    assert not second.next_page_token
    seqs = [m.seq for m in [*first.messages, *second.messages]]
    assert seqs == sorted(seqs) and seqs[0] == said.seq


async def test_bad_input(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    a = await agent(agents, "x")
    made = await room(rooms, [(a, WORKER)], humans=("alice",))
    cases: list[tuple[object, grpc.StatusCode, str]] = [
        (
            rooms.CreateRoom(room_pb2.CreateRoomRequest(room=room_pb2.Room(display_name=""))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "room.display_name",
        ),
        (
            rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="r", members=[room_pb2.RoomMember(agent_id="agt_missing")]
                    )
                )
            ),
            grpc.StatusCode.NOT_FOUND,
            "room.members[0].agent_id",
        ),
        (
            rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="r",
                        members=[
                            room_pb2.RoomMember(participant_id="ann"),
                            room_pb2.RoomMember(agent_id=a, role="boss"),
                        ],
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "room.members[1].role: 'boss' is not a role; use one of: leader, worker, observer",
        ),
        (
            rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="r",
                        members=[room_pb2.RoomMember(agent_id=a, role="ROOM_ROLE_LEADER")],
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "room.members[0].role",
        ),
        (
            rooms.JoinRoom(
                room_pb2.JoinRoomRequest(room_id=made.id, participant_id="bo", role="chief")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "role: 'chief' is not a role",
        ),
        (
            rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="t", strategy="vote")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "strategy: 'vote' is not a strategy; use one of: round_robin, leader, mention",
        ),
        (
            rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="r",
                        members=[room_pb2.RoomMember(agent_id=a), room_pb2.RoomMember(agent_id=a)],
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "listed twice",
        ),
        (
            rooms.GetRoom(room_pb2.GetRoomRequest(id="room_nope")),
            grpc.StatusCode.NOT_FOUND,
            "room_nope",
        ),
        (
            rooms.Say(room_pb2.SayRequest(room_id=made.id, participant_id="alice", text="  ")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "text",
        ),
        (
            rooms.Say(room_pb2.SayRequest(room_id=made.id, participant_id="mallory", text="hi")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a member",
        ),
        (
            rooms.Say(room_pb2.SayRequest(room_id=made.id, text="hi")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "participant_id",
        ),
        (
            rooms.Say(
                room_pb2.SayRequest(
                    room_id=made.id, participant_id="alice", text="hi", mentions=["zed"]
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mentions[0]",
        ),
        (
            rooms.Say(room_pb2.SayRequest(room_id="room_nope", participant_id="a", text="hi")),
            grpc.StatusCode.NOT_FOUND,
            "room_nope",
        ),
        (
            rooms.JoinRoom(room_pb2.JoinRoomRequest(room_id=made.id, agent_id="agt_missing")),
            grpc.StatusCode.NOT_FOUND,
            "agt_missing",
        ),
        (
            rooms.JoinRoom(room_pb2.JoinRoomRequest(room_id=made.id, participant_id="alice")),
            grpc.StatusCode.ALREADY_EXISTS,
            "alice",
        ),
        (
            rooms.LeaveRoom(room_pb2.LeaveRoomRequest(room_id=made.id, participant_id="zed")),
            grpc.StatusCode.NOT_FOUND,
            "zed",
        ),
        (
            rooms.JoinRoom(room_pb2.JoinRoomRequest(room_id=made.id, participant_id=SYSTEM)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "participant_id: 'system' is reserved for the task of a collaboration",
        ),
        (
            rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="r", members=[room_pb2.RoomMember(participant_id=SYSTEM)]
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "room.members[0].participant_id: 'system' is reserved",
        ),
        (
            rooms.Say(room_pb2.SayRequest(room_id=made.id, participant_id=SYSTEM, text="hi")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a member",
        ),
        (
            rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "task",
        ),
        (
            rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="t", max_turns=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_turns",
        ),
        (
            rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="t", strategy="leader")),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no agent with the role leader",
        ),
        (
            rooms.GetHistory(room_pb2.GetHistoryRequest(room_id=made.id, page_token="garbage")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
        (
            rooms.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=made.id, id="rrun_nope")),
            grpc.StatusCode.NOT_FOUND,
            "rrun_nope",
        ),
    ]
    for call, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call  # type: ignore[misc]
        assert failure.value.code() == code, (text, failure.value.details())
        assert text in (failure.value.details() or ""), failure.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        stream = rooms.StreamRoom(room_pb2.StreamRoomRequest(room_id=made.id, after_seq=-1))
        await stream.read()
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_seq" in (negative.value.details() or "")


async def test_round_robin_takes_turns_and_streams_deltas(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    a = await agent(agents, "a one", "a two")
    b = await agent(agents, "b one", "b two")
    watcher = await agent(agents, "never")
    made = await room(rooms, [(a, WORKER), (b, WORKER), (watcher, OBSERVER)])
    run, events = await run_to_end(rooms, made.id, task="count", max_turns=4)
    assert (run.status, run.turns, run.result, run.strategy) == (
        COMPLETED,
        4,
        "b two",
        "round_robin",
    )
    assert run.usage.output_tokens > 0
    assert messages(events)[-5:] == [
        (SYSTEM, "count"),
        (a, "a one"),
        (b, "b one"),
        (a, "a two"),
        (b, "b two"),
    ]
    turns = [e.turn_change for e in events if e.WhichOneof("event") == "turn_change"]
    assert [(t.turn, t.agent_id) for t in turns] == [(1, a), (2, b), (3, a), (4, b)]
    deltas = "".join(e.delta.delta for e in events if e.WhichOneof("event") == "delta")
    assert deltas == "a oneb onea twob two"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # Each turn: its turn change, typing, the pieces (batched), then its message.
    every = kinds(events)
    collapsed = [k for i, k in enumerate(every) if k != "delta" or every[i - 1] != "delta"]
    assert collapsed[-17:] == ["turn_change", "typing", "delta", "message"] * 4 + ["run_update"]
    assert kinds(events)[-1] == "run_update"


async def test_stop_phrase_ends_early(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    a = await agent(agents, "working", "we are DONE here")
    b = await agent(agents, "ok")
    made = await room(rooms, [(a, WORKER), (b, WORKER)])
    run, _ = await run_to_end(rooms, made.id, task="t", max_turns=10, stop_condition="done")
    assert (run.status, run.turns, run.result) == (COMPLETED, 3, "we are DONE here")


async def test_leader_delegates_to_workers_and_answers(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    w1 = await agent(agents, "Paris")
    w2 = await agent(agents, "Rome")
    leader = await agent(
        agents,
        calls=[
            {
                "tool_calls": [
                    {"name": "delegate", "arguments": {"worker": w1, "task": "capital of France?"}},
                    {"name": "delegate", "arguments": {"worker": w2, "task": "capital of Italy?"}},
                ]
            },
            {"text": "Final: Paris and Rome"},
        ],
    )
    made = await room(rooms, [(leader, LEADER), (w1, WORKER), (w2, WORKER)])
    run, events = await run_to_end(rooms, made.id, task="capitals", strategy="leader")
    assert (run.status, run.result, run.turns) == (COMPLETED, "Final: Paris and Rome", 3)
    assert run.strategy == "leader"
    assert messages(events)[-6:] == [
        (SYSTEM, "capitals"),
        (leader, f"@{w1} capital of France?"),
        (w1, "Paris"),
        (leader, f"@{w2} capital of Italy?"),
        (w2, "Rome"),
        (leader, "Final: Paris and Rome"),
    ]
    turns = [e.turn_change for e in events if e.WhichOneof("event") == "turn_change"]
    assert [(t.agent_id, t.task) for t in turns] == [
        (leader, ""),
        (w1, "capital of France?"),
        (w2, "capital of Italy?"),
    ]


async def test_leader_runs_out_of_turns(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    w1 = await agent(agents, "yes")
    leader = await agent(
        agents,
        calls=[
            {
                "tool_calls": [
                    {"name": "delegate", "arguments": {"worker": w1, "task": "one"}},
                    {"name": "delegate", "arguments": {"worker": w1, "task": "two"}},
                    {"name": "delegate", "arguments": {"worker": "agt_stranger", "task": "x"}},
                ]
            },
            {"text": "Final"},
        ],
    )
    made = await room(rooms, [(leader, LEADER), (w1, WORKER)])
    run, events = await run_to_end(rooms, made.id, task="t", strategy="leader", max_turns=2)
    assert (run.status, run.turns, run.result) == (COMPLETED, 2, "Final")
    assert [s for s, _ in messages(events)].count(w1) == 1


async def test_a_worker_cannot_delegate_further(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    w2 = await agent(agents, "w2 speaks")
    # w1 has `delegate` among its own tools and tries to pass its task on.
    w1 = await agent(
        agents,
        calls=[
            {"tool_calls": [{"name": "delegate", "arguments": {"worker": w2, "task": "yours"}}]},
            {"text": "w1 did it"},
        ],
        tools=["delegate"],
    )
    leader = await agent(
        agents,
        calls=[
            {"tool_calls": [{"name": "delegate", "arguments": {"worker": w1, "task": "go"}}]},
            {"text": "Final"},
        ],
    )
    made = await room(rooms, [(leader, LEADER), (w1, WORKER), (w2, WORKER)])
    run, events = await run_to_end(rooms, made.id, task="t", strategy="leader")
    assert (run.status, run.turns, run.result) == (COMPLETED, 2, "Final")
    assert [s for s, _ in messages(events)] == [SYSTEM, leader, w1, leader]


async def test_mention_strategy_answers_only_when_mentioned(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    c = await agent(agents, "c answers")
    b = await agent(agents, f"b asks @{c}")
    quiet = await agent(agents, "never speaks")
    made = await room(rooms, [(b, WORKER), (c, WORKER), (quiet, WORKER)])
    run, events = await run_to_end(rooms, made.id, task=f"@{b} please", strategy="mention")
    assert (run.status, run.turns) == (COMPLETED, 2)
    assert messages(events)[-3:] == [
        (SYSTEM, f"@{b} please"),
        (b, f"b asks @{c}"),
        (c, "c answers"),
    ]
    nobody, _ = await run_to_end(rooms, made.id, task="no mention", strategy="mention")
    assert (nobody.status, nobody.turns) == (COMPLETED, 0)


async def test_mention_strategy_stops_at_max_turns(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    # b and c hand the word to each other forever: only max_turns ends it.
    b, c = agent_id("b"), agent_id("c")
    await agent(agents, f"@{c} your turn", agent_id=b)
    await agent(agents, f"@{b} your turn", agent_id=c)
    made = await room(rooms, [(b, WORKER), (c, WORKER)])
    run, events = await run_to_end(
        rooms, made.id, task=f"@{b} start", strategy="mention", max_turns=3
    )
    assert (run.status, run.turns, run.max_turns, run.error) == (COMPLETED, 3, 3, "")
    assert run.result == f"@{c} your turn"
    assert messages(events) == [
        (SYSTEM, f"@{b} start"),
        (b, f"@{c} your turn"),
        (c, f"@{b} your turn"),
        (b, f"@{c} your turn"),
    ]
    turns = [e.turn_change for e in events if e.WhichOneof("event") == "turn_change"]
    assert [(t.turn, t.agent_id) for t in turns] == [(1, b), (2, c), (3, b)]


async def test_mention_strategy_stops_at_the_stop_phrase(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    # c's reply says the stop phrase and mentions b again: without the phrase
    # b would answer (and so on until max_turns).
    b, c = agent_id("b"), agent_id("c")
    await agent(agents, f"@{c} your turn", agent_id=b)
    await agent(agents, f"All DONE. @{b} your turn", agent_id=c)
    made = await room(rooms, [(b, WORKER), (c, WORKER)])
    run, events = await run_to_end(
        rooms,
        made.id,
        task=f"@{b} start",
        strategy="mention",
        max_turns=10,
        stop_condition="all done",
    )
    assert (run.status, run.turns, run.error) == (COMPLETED, 2, "")
    assert run.result == f"All DONE. @{b} your turn"
    assert [s for s, _ in messages(events)] == [SYSTEM, b, c]


async def test_leader_strategy_stops_when_a_worker_says_the_stop_phrase(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    w1 = await agent(agents, "FINISHED: the answer is 7")
    w2 = await agent(agents, "w2 should never speak")
    leader = await agent(
        agents,
        calls=[
            {
                "tool_calls": [
                    {"name": "delegate", "arguments": {"worker": w1, "task": "solve"}},
                    {"name": "delegate", "arguments": {"worker": w2, "task": "check"}},
                ]
            },
            {"text": "Final: 7"},
        ],
    )
    made = await room(rooms, [(leader, LEADER), (w1, WORKER), (w2, WORKER)])
    run, events = await run_to_end(
        rooms, made.id, task="t", strategy="leader", max_turns=10, stop_condition="finished"
    )
    # w1's stop phrase ends the delegations: w2 never gets a turn, and the
    # leader still writes the final answer.
    assert (run.status, run.turns, run.result) == (COMPLETED, 2, "Final: 7")
    assert messages(events) == [
        (SYSTEM, "t"),
        (leader, f"@{w1} solve"),
        (w1, "FINISHED: the answer is 7"),
        (leader, "Final: 7"),
    ]
    turns = [e.turn_change for e in events if e.WhichOneof("event") == "turn_change"]
    assert [t.agent_id for t in turns] == [leader, w1]


async def test_leader_strategy_stops_when_the_leader_says_the_stop_phrase(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    w1 = await agent(agents, "w1 works")
    leader = await agent(agents, "STOP here, no delegation needed")
    made = await room(rooms, [(leader, LEADER), (w1, WORKER)])
    run, events = await run_to_end(
        rooms, made.id, task="t", strategy="leader", max_turns=10, stop_condition="stop"
    )
    assert (run.status, run.turns, run.result) == (COMPLETED, 1, "STOP here, no delegation needed")
    assert [s for s, _ in messages(events)] == [SYSTEM, leader]


async def test_mention_of_an_agent_that_left_meanwhile_is_skipped(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    c = await agent(agents, "c answers")
    b = await agent(agents, f"b asks @{c} now", delay_ms=150)
    made = await room(rooms, [(b, WORKER), (c, WORKER)])
    run = await rooms.RunRoom(
        room_pb2.RunRoomRequest(room_id=made.id, task=f"@{b} please", strategy="mention")
    )
    async with asyncio.timeout(30):
        stream = rooms.StreamRoom(room_pb2.StreamRoomRequest(room_id=made.id, room_run_id=run.id))
        async for event in stream:
            if event.WhichOneof("event") == "delta":
                # c leaves while b is still writing the reply that mentions it.
                await rooms.LeaveRoom(room_pb2.LeaveRoomRequest(room_id=made.id, agent_id=c))
                break
        stream.cancel()
    events = await collect(rooms, made.id, 0, run.id)
    final = await rooms.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=made.id, id=run.id))
    assert (final.status, final.turns, final.error) == (COMPLETED, 1, "")
    assert [s for s, _ in messages(events)] == [SYSTEM, b]


async def test_stream_resumes_after_a_seq(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    a = await agent(agents, "one two three four", delay_ms=20)
    made = await room(rooms, [(a, WORKER)])
    run = await rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="go", max_turns=2))
    stream = rooms.StreamRoom(room_pb2.StreamRoomRequest(room_id=made.id))
    head = [await stream.read() for _ in range(6)]
    stream.cancel()
    rest = await collect(rooms, made.id, head[-1].seq, run.id)
    whole = await collect(rooms, made.id, 0, run.id)
    assert [*head, *rest] == whole
    assert [e.seq for e in whole] == list(range(1, len(whole) + 1))


async def test_double_text_policies(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    slow = await agent(agents, "a b c d e f g h i j", delay_ms=60)

    async def busy_room(policy: int) -> tuple[str, room_pb2.RoomRun]:
        made = await room(rooms, [(slow, WORKER)], humans=("alice",), policy=policy)
        run = await rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="t", max_turns=3))
        await asyncio.sleep(0.2)
        return made.id, run

    say = room_pb2.SayRequest(participant_id="alice", text="wait")
    rejecting, run = await busy_room(run_pb2.MULTITASK_STRATEGY_REJECT)
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await rooms.Say(room_pb2.SayRequest(room_id=rejecting, participant_id="alice", text="x"))
    assert rejected.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await rooms.CancelRoomRun(room_pb2.CancelRoomRunRequest(room_id=rejecting, id=run.id))

    enqueuing, run = await busy_room(run_pb2.MULTITASK_STRATEGY_ENQUEUE)
    say.room_id = enqueuing
    await rooms.Say(say)
    events = await collect(rooms, enqueuing, 0, run.id)
    ended = await rooms.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=enqueuing, id=run.id))
    assert (ended.status, ended.turns) == (COMPLETED, 3)
    assert ("alice", "wait") in messages(events)

    interrupting, run = await busy_room(run_pb2.MULTITASK_STRATEGY_INTERRUPT)
    say.room_id = interrupting
    await rooms.Say(say)
    stopped = await rooms.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=interrupting, id=run.id))
    assert stopped.status == run_pb2.RUN_STATUS_CANCELLED and "interrupted" in stopped.error
    await asyncio.sleep(0.5)
    history = await rooms.GetHistory(room_pb2.GetHistoryRequest(room_id=interrupting))
    assert history.messages[-1].text == "wait"
    assert (
        await rooms.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=interrupting, id=run.id))
    ).turns <= 1


async def test_concurrent_run_room_calls_start_one_collaboration(
    agents: agent_pb2_grpc.AgentServiceStub, rooms: room_pb2_grpc.RoomServiceStub
) -> None:
    slow = await agent(agents, "a b c d e f", delay_ms=40)
    made = await room(rooms, [(slow, WORKER)])
    request = room_pb2.RunRoomRequest(room_id=made.id, task="t", max_turns=2)
    results = await asyncio.gather(
        *(rooms.RunRoom(request) for _ in range(5)), return_exceptions=True
    )
    started = [r for r in results if isinstance(r, room_pb2.RoomRun)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(started) == 1 and len(refused) == 4, results
    assert {r.code() for r in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert all(started[0].id in (r.details() or "") for r in refused), refused
    events = await collect(rooms, made.id, 0, started[0].id)
    updates = [e.run_update for e in events if e.WhichOneof("event") == "run_update"]
    assert {u.id for u in updates} == {started[0].id}
    assert [t for s, t in messages(events) if s == SYSTEM] == ["t"]


# What reaches the model: an `openai` agent pointed at the fake model server,
# which records every request.

KEY_FILE = "rooms-fake-model-key"


@pytest.fixture
def fake_model(stack_under_test: Stack) -> Iterator[FakeModelServer]:
    """A fake model server, its key in the stack's secrets directory."""
    key = "sk-rooms-" + uuid.uuid4().hex
    secrets = stack_under_test.data_dir / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / KEY_FILE).write_text(key)
    with FakeModelServer(expected_api_key=key) as fake:
        yield fake


async def openai_agent(
    agents: agent_pb2_grpc.AgentServiceStub, fake: FakeModelServer, instructions: str
) -> str:
    made = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(
                display_name="Listener",
                instructions=instructions,
                model=agent_pb2.ModelConfig(
                    provider="openai",
                    model="model-test",
                    base_url=fake.openai_base_url,
                    api_key=agent_pb2.SecretRef(file=KEY_FILE),
                ),
            )
        )
    )
    return made.id


def sent_messages(fake: FakeModelServer, index: int) -> list[dict[str, Any]]:
    """The chat messages of the model request number `index`."""
    messages: list[dict[str, Any]] = fake.requests[index].json["messages"]
    return messages


async def test_the_model_sees_humans_and_other_agents(
    agents: agent_pb2_grpc.AgentServiceStub,
    rooms: room_pb2_grpc.RoomServiceStub,
    fake_model: FakeModelServer,
) -> None:
    fake_model.enqueue(Reply(text="listener first"), Reply(text="listener second"))
    listener = await openai_agent(agents, fake_model, "Listen well.")
    other = await agent(agents, "other agent: the launch is on Tuesday")
    made = await room(rooms, [(listener, WORKER), (other, WORKER)], humans=("alice",))
    await rooms.Say(
        room_pb2.SayRequest(room_id=made.id, participant_id="alice", text="the budget is 5k")
    )
    run, _ = await run_to_end(rooms, made.id, task="plan the launch", max_turns=3)
    assert (run.status, run.turns, run.result) == (COMPLETED, 3, "listener second")
    assert len(fake_model.requests) == 2
    first, second = sent_messages(fake_model, 0), sent_messages(fake_model, 1)
    # Its instructions, then where it is and who else is there.
    assert first[0]["role"] == "system"
    assert first[0]["content"].startswith("Listen well.\n\nYou are Listener")
    assert f"{other} (agent, worker)" in first[0]["content"]
    assert "alice (human, worker)" in first[0]["content"]
    assert first[1:] == [
        {"role": "user", "content": "[alice]: the budget is 5k"},
        {"role": "user", "content": "[task]: plan the launch"},
    ]
    # Its next turn: its own reply as the assistant's, the other agent's as a user turn.
    assert second[1:] == [
        {"role": "user", "content": "[alice]: the budget is 5k"},
        {"role": "user", "content": "[task]: plan the launch"},
        {"role": "assistant", "content": "listener first"},
        {"role": "user", "content": f"[{other}]: other agent: the launch is on Tuesday"},
    ]


async def test_the_leader_reads_the_workers_answer(
    agents: agent_pb2_grpc.AgentServiceStub,
    rooms: room_pb2_grpc.RoomServiceStub,
    fake_model: FakeModelServer,
) -> None:
    worker = await agent(agents, "the worker found 42")
    fake_model.enqueue(
        Reply(
            tool_calls=[
                FakeToolCall("delegate", {"worker": worker, "task": "find it"}, id="call_d")
            ]
        ),
        Reply(text="The answer is 42."),
    )
    leader = await openai_agent(agents, fake_model, "Lead.")
    made = await room(rooms, [(leader, LEADER), (worker, WORKER)])
    run, events = await run_to_end(rooms, made.id, task="what is it?", strategy="leader")
    assert (run.status, run.turns, run.result) == (COMPLETED, 2, "The answer is 42.")
    assert len(fake_model.requests) == 2
    tools = [t["function"]["name"] for t in fake_model.requests[0].json["tools"]]
    assert "delegate" in tools
    after = sent_messages(fake_model, 1)
    call = next(m for m in after if m["role"] == "assistant" and m.get("tool_calls"))
    assert call["tool_calls"][0]["id"] == "call_d"
    result = next(m for m in after if m["role"] == "tool")
    assert result["tool_call_id"] == "call_d"
    assert json.loads(result["content"]) == {"worker": worker, "answer": "the worker found 42"}
    assert messages(events) == [
        (SYSTEM, "what is it?"),
        (leader, f"@{worker} find it"),
        (worker, "the worker found 42"),
        (leader, "The answer is 42."),
    ]
