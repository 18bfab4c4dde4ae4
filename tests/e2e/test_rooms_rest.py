"""RoomService through the Envoy edge: the fixed REST shapes, SSE streams
with resume, and bad requests."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from aster.v1 import agent_pb2_grpc, room_pb2
from tests.chat_helpers import scripted_agent, sse_events
from tests.conftest import Stack


@pytest.fixture
def stack_under_test(any_stack: Stack) -> Stack:
    """Every test here that uses `channel` or `http` runs on SQLite and on PostgreSQL."""
    return any_stack


async def _events(http: httpx.AsyncClient, room_id: str, **params: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        return [
            data
            async for data in sse_events(http, "GET", f"/v1/rooms/{room_id}/stream", params=params)
        ]


async def test_rest_shapes_and_a_collaboration_over_sse(
    channel: grpc.aio.Channel, http: httpx.AsyncClient
) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    worker = (await scripted_agent(agents, script=[{"text": "done by worker"}], delay_ms=10)).id
    lead = (
        await scripted_agent(
            agents,
            script=[
                {
                    "tool_calls": [
                        {"name": "delegate", "arguments": {"worker": worker, "task": "do"}}
                    ]
                },
                {"text": "all done"},
            ],
        )
    ).id
    created = await http.post(
        "/v1/rooms",
        json={
            "display_name": "REST room",
            "members": [
                {"agent_id": lead, "role": "leader"},
                {"agent_id": worker, "role": "worker"},
                {"participant_id": "alice"},
            ],
        },
    )
    assert created.status_code == 200, created.text
    room_id = created.json()["id"]
    assert [m["role"] for m in created.json()["members"]] == ["leader", "worker", "worker"]
    said = await http.post(
        f"/v1/rooms/{room_id}/say", json={"participant_id": "alice", "text": f"hello @{lead}"}
    )
    assert said.status_code == 200, said.text
    assert said.json()["mentions"] == [lead]
    by_agent = await http.post(f"/v1/rooms/{room_id}/say", json={"agent_id": worker, "text": "hi"})
    assert by_agent.status_code == 200, by_agent.text
    history = (await http.get(f"/v1/rooms/{room_id}/history")).json()
    assert [
        (m.get("participant_id") or m.get("agent_id"), m["text"]) for m in history["messages"]
    ] == [
        ("alice", f"hello @{lead}"),
        (worker, "hi"),
    ]

    started = await http.post(
        f"/v1/rooms/{room_id}/run", json={"task": "work", "strategy": "leader"}
    )
    assert started.status_code == 200, started.text
    run_id = started.json()["id"]
    assert started.json()["strategy"] == "leader"
    whole = await _events(http, room_id, room_run_id=run_id)
    assert [int(e["seq"]) for e in whole] == list(range(1, len(whole) + 1))
    parsed = [json_format.ParseDict(e, room_pb2.RoomEvent()) for e in whole]
    final = parsed[-1].run_update
    assert (final.status, final.result) == (3, "all done")
    assert "".join(e.delta.delta for e in parsed if e.WhichOneof("event") == "delta") == (
        "done by workerall done"
    )
    # Resume from the middle: exactly the rest, through the edge.
    middle = int(whole[len(whole) // 2]["seq"])
    rest = await _events(http, room_id, after_seq=middle, room_run_id=run_id)
    assert rest == whole[len(whole) // 2 + 1 :]
    got = await http.get(f"/v1/rooms/{room_id}/runs/{run_id}")
    assert got.json()["status"] == "RUN_STATUS_COMPLETED"
    # Every message of the history has its text and its speaker: the task
    # the system's, the rest the members'.
    history = (await http.get(f"/v1/rooms/{room_id}/history")).json()
    for message in history["messages"]:
        assert message["text"], message
        speakers = [message[k] for k in ("agent_id", "participant_id") if message.get(k)]
        assert len(speakers) == 1, message
    assert [
        (m.get("agent_id") or m.get("participant_id"), m["text"]) for m in history["messages"]
    ] == [
        ("alice", f"hello @{lead}"),
        (worker, "hi"),
        ("system", "work"),
        (lead, f"@{worker} do"),
        (worker, "done by worker"),
        (lead, "all done"),
    ]
    task = history["messages"][2]
    assert task["room_run_id"] == run_id and "agent_id" not in task
    members = (await http.get(f"/v1/rooms/{room_id}/members")).json()["members"]
    assert [m.get("agent_id") or m.get("participant_id") for m in members] == [
        lead,
        worker,
        "alice",
    ]


async def test_rest_bad_requests(channel: grpc.aio.Channel, http: httpx.AsyncClient) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    worker = (await scripted_agent(agents)).id
    room_id = (
        await http.post("/v1/rooms", json={"display_name": "r", "members": [{"agent_id": worker}]})
    ).json()["id"]
    malformed = await http.post(
        "/v1/rooms", content=b'{"display_name": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400, malformed.text
    bad_role = await http.post(
        "/v1/rooms",
        json={
            "display_name": "r",
            "members": [{"participant_id": "ann"}, {"agent_id": worker, "role": "boss"}],
        },
    )
    assert bad_role.status_code == 400, bad_role.text
    assert bad_role.json()["message"] == (
        "room.members[1].role: 'boss' is not a role; use one of: leader, worker, observer"
    )
    role_type = await http.post(
        "/v1/rooms",
        json={"display_name": "r", "members": [{"agent_id": worker, "role": 1}]},
    )
    assert role_type.status_code == 400, role_type.text
    bad_strategy = await http.post(
        f"/v1/rooms/{room_id}/run", json={"task": "t", "strategy": "ROOM_STRATEGY_LEADER"}
    )
    assert bad_strategy.status_code == 400, bad_strategy.text
    assert (
        "strategy: 'ROOM_STRATEGY_LEADER' is not a strategy; use one of: round_robin, "
        in (bad_strategy.json()["message"])
    )
    observer = await http.post(
        f"/v1/rooms/{room_id}/join", json={"participant_id": "obs", "role": "Observer"}
    )
    assert observer.status_code == 200 and observer.json()["role"] == "observer", observer.text
    wrong_type = await http.post(f"/v1/rooms/{room_id}/say", json={"agent_id": worker, "text": 5})
    assert wrong_type.status_code == 400
    empty = await http.post(f"/v1/rooms/{room_id}/say", json={"agent_id": worker, "text": ""})
    assert empty.status_code == 400 and "text" in empty.json()["message"]
    stranger = await http.post(
        f"/v1/rooms/{room_id}/say", json={"participant_id": "zed", "text": "hi"}
    )
    assert stranger.status_code == 400 and "not a member" in stranger.json()["message"]
    unknown_agent = await http.post(
        "/v1/rooms", json={"display_name": "r", "members": [{"agent_id": "agt_nobody"}]}
    )
    assert unknown_agent.status_code == 404 and "agt_nobody" in unknown_agent.json()["message"]
    missing = await http.get("/v1/rooms/room_nobody/history")
    assert missing.status_code == 404
    stream_missing = await http.get("/v1/rooms/room_nobody/stream")
    assert stream_missing.status_code == 404
