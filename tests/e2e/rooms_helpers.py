"""Helpers for room tests: rooms of scripted agents, collecting events."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from google.protobuf import struct_pb2

from aster.v1 import agent_pb2, agent_pb2_grpc, room_pb2, room_pb2_grpc, run_pb2
from tests.chat_helpers import scripted_agent

LEADER = "leader"
WORKER = "worker"
OBSERVER = "observer"
# The speaker (participant_id) of the task that opens a collaboration.
SYSTEM = "system"


def agent_id(name: str) -> str:
    """A fresh agent id to propose, so that scripts can mention agents
    created after them."""
    return f"agt_{name}_{uuid.uuid4().hex[:10]}"


async def agent(
    agents: agent_pb2_grpc.AgentServiceStub,
    *texts: str,
    calls: list[Any] | None = None,
    agent_id: str = "",
    **kw: Any,
) -> str:
    """A scripted agent replying `texts` in turn (with the id `agent_id`,
    if given); its id."""
    script: list[dict[str, Any]] = [{"text": t} for t in texts]
    if calls is not None:
        script = calls
    if agent_id:
        params = struct_pb2.Struct()
        params.update({"script": script, "token_delay_ms": kw.pop("delay_ms", 0)})
        spec = agent_pb2.Agent(
            display_name=f"scripted-{agent_id[-6:]}",
            model=agent_pb2.ModelConfig(provider="scripted", params=params),
            **kw,
        )
        request = agent_pb2.CreateAgentRequest(agent=spec, agent_id=agent_id)
        return (await agents.CreateAgent(request)).id
    made = await scripted_agent(agents, script=script, **kw)
    return made.id


async def room(
    rooms: room_pb2_grpc.RoomServiceStub,
    members: list[tuple[str, str]],
    *,
    humans: tuple[str, ...] = (),
    policy: int = run_pb2.MULTITASK_STRATEGY_UNSPECIFIED,
) -> room_pb2.Room:
    """A room with agent `members` (id, role) and human participants."""
    spec = room_pb2.Room(
        display_name="test room",
        members=[room_pb2.RoomMember(agent_id=a, role=r) for a, r in members]
        + [room_pb2.RoomMember(participant_id=h) for h in humans],
        double_text_policy=policy,  # type: ignore[arg-type]
    )
    return await rooms.CreateRoom(room_pb2.CreateRoomRequest(room=spec))


async def run_to_end(
    rooms: room_pb2_grpc.RoomServiceStub, room_id: str, **fields: Any
) -> tuple[room_pb2.RoomRun, list[room_pb2.RoomEvent]]:
    """Starts a collaboration and follows the room's stream until it ends."""
    run = await rooms.RunRoom(room_pb2.RunRoomRequest(room_id=room_id, **fields))
    events = await collect(rooms, room_id, 0, run.id)
    final = await rooms.GetRoomRun(room_pb2.GetRoomRunRequest(room_id=room_id, id=run.id))
    return final, events


async def collect(
    rooms: room_pb2_grpc.RoomServiceStub, room_id: str, after_seq: int, run_id: str
) -> list[room_pb2.RoomEvent]:
    """The room's events after `after_seq` until collaboration `run_id` ends."""
    async with asyncio.timeout(30):
        stream = rooms.StreamRoom(
            room_pb2.StreamRoomRequest(room_id=room_id, after_seq=after_seq, room_run_id=run_id)
        )
        return [e async for e in stream]


def messages(events: list[room_pb2.RoomEvent]) -> list[tuple[str, str]]:
    """(speaker, text) of the message events; every message has a speaker
    (the task of a collaboration: SYSTEM)."""
    found = []
    for event in events:
        if event.WhichOneof("event") == "message":
            speaker = event.message.WhichOneof("speaker")
            assert speaker is not None, event.message
            found.append((getattr(event.message, speaker), event.message.text))
    return found


def kinds(events: list[room_pb2.RoomEvent]) -> list[str]:
    """The event kinds in order."""
    return [str(e.WhichOneof("event")) for e in events]
