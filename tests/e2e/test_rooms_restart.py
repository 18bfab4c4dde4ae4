"""Rooms across a server restart, and between tenants (their own servers,
on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import httpx
import pytest

from aster.server.rpc.convert import dict_to_struct
from aster.v1 import agent_pb2, agent_pb2_grpc, room_pb2, room_pb2_grpc, run_pb2
from tests.auth_helpers import Signer, auth_env
from tests.conftest import DatabaseFor
from tests.e2e.rooms_helpers import LEADER, WORKER, agent, room
from tests.processes import Ports, start_edge, start_server


async def test_a_room_survives_a_crash_and_its_run_is_marked_failed(
    tmp_path: Path, database_for: DatabaseFor
) -> None:
    env = {"ASTER_RUN_LEASE_S": "2", **database_for("rooms_restart")}
    ports = Ports()
    server = start_server(ports, tmp_path, **env)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        rooms = room_pb2_grpc.RoomServiceStub(channel)
        slow = await agent(agents, " ".join(f"w{i}" for i in range(200)), delay_ms=20)
        made = await room(rooms, [(slow, LEADER)], humans=("alice",))
        await rooms.Say(room_pb2.SayRequest(room_id=made.id, participant_id="alice", text="hi"))
        run = await rooms.RunRoom(room_pb2.RunRoomRequest(room_id=made.id, task="talk"))
        await asyncio.sleep(0.5)
        before = await rooms.GetHistory(room_pb2.GetHistoryRequest(room_id=made.id))
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)
    server.stop()
    restarted = start_server(ports, tmp_path, **env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            again = await rooms.GetRoom(room_pb2.GetRoomRequest(id=made.id))
            assert [m.agent_id or m.participant_id for m in again.members] == [slow, "alice"]
            after = await rooms.GetHistory(room_pb2.GetHistoryRequest(room_id=made.id))
            assert after.messages == before.messages
            assert [m.text for m in after.messages] == ["hi", "talk"]
            async with asyncio.timeout(20):
                while True:
                    current = await rooms.GetRoomRun(
                        room_pb2.GetRoomRunRequest(room_id=made.id, id=run.id)
                    )
                    if current.status != run_pb2.RUN_STATUS_RUNNING:
                        break
                    await asyncio.sleep(0.2)
            assert current.status == run_pb2.RUN_STATUS_FAILED
            assert "replica" in current.error
            # The stream, replayed from the start, ends with that verdict.
            events = [
                e
                async for e in rooms.StreamRoom(
                    room_pb2.StreamRoomRequest(room_id=made.id, room_run_id=run.id)
                )
            ]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].run_update.status == run_pb2.RUN_STATUS_FAILED
            # The room works on: a new collaboration runs to its end.
            fresh = await rooms.RunRoom(
                room_pb2.RunRoomRequest(room_id=made.id, task="again", max_turns=1)
            )
            assert fresh.status == run_pb2.RUN_STATUS_RUNNING
    finally:
        assert restarted.stop() == 0


async def agent_in(
    agents: agent_pb2_grpc.AgentServiceStub, metadata: tuple[tuple[str, str], ...]
) -> str:
    """A scripted agent of the tenant `metadata` authenticates."""
    made = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="t")), metadata=metadata
    )
    return made.id


@pytest.fixture
def signer() -> Signer:
    return Signer()


async def test_tenants_never_see_each_others_rooms(
    tmp_path: Path, signer: Signer, database_for: DatabaseFor
) -> None:
    ports = Ports()
    env = auth_env(signer.write_jwks(tmp_path / "jwks.json"), **database_for("rooms_tenants"))
    server = start_server(ports, tmp_path, **env)
    scope = "agents.read agents.write rooms.read rooms.write"

    def creds(tenant: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {signer.token(tenant=tenant, scope=scope)}"),)

    try:
        edge = start_edge(ports, tmp_path, **env)
    except BaseException:
        server.stop()
        raise
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            a, b = creds("tenant-a"), creds("tenant-b")
            slow = await agents.CreateAgent(
                agent_pb2.CreateAgentRequest(
                    agent=agent_pb2.Agent(
                        display_name="slow",
                        model=agent_pb2.ModelConfig(
                            provider="scripted",
                            params=dict_to_struct(
                                {
                                    "token_delay_ms": 50,
                                    "script": [{"text": " ".join(["w"] * 400)}],
                                }
                            ),
                        ),
                    )
                ),
                metadata=a,
            )
            mine = await rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="a's",
                        members=[
                            room_pb2.RoomMember(participant_id="alice"),
                            room_pb2.RoomMember(agent_id=slow.id),
                        ],
                    )
                ),
                metadata=a,
            )
            # b's own room, to pair with a's ids.
            yours = await rooms.CreateRoom(
                room_pb2.CreateRoomRequest(
                    room=room_pb2.Room(
                        display_name="b's", members=[room_pb2.RoomMember(participant_id="alice")]
                    )
                ),
                metadata=b,
            )
            running = await rooms.RunRoom(
                room_pb2.RunRoomRequest(room_id=mine.id, task="t", max_turns=1), metadata=a
            )
            calls = [
                rooms.GetRoom(room_pb2.GetRoomRequest(id=mine.id), metadata=b),
                rooms.GetHistory(room_pb2.GetHistoryRequest(room_id=mine.id), metadata=b),
                rooms.ListMembers(room_pb2.ListMembersRequest(room_id=mine.id), metadata=b),
                rooms.Say(
                    room_pb2.SayRequest(room_id=mine.id, participant_id="alice", text="x"),
                    metadata=b,
                ),
                rooms.JoinRoom(
                    room_pb2.JoinRoomRequest(room_id=mine.id, participant_id="eve"), metadata=b
                ),
                rooms.LeaveRoom(
                    room_pb2.LeaveRoomRequest(room_id=mine.id, participant_id="alice"),
                    metadata=b,
                ),
                rooms.LeaveRoom(
                    room_pb2.LeaveRoomRequest(room_id=mine.id, agent_id=slow.id), metadata=b
                ),
                rooms.RunRoom(room_pb2.RunRoomRequest(room_id=mine.id, task="t"), metadata=b),
                rooms.GetRoomRun(
                    room_pb2.GetRoomRunRequest(room_id=mine.id, id=running.id), metadata=b
                ),
                rooms.GetRoomRun(
                    room_pb2.GetRoomRunRequest(room_id=yours.id, id=running.id), metadata=b
                ),
                rooms.CancelRoomRun(
                    room_pb2.CancelRoomRunRequest(room_id=mine.id, id=running.id), metadata=b
                ),
                rooms.CancelRoomRun(
                    room_pb2.CancelRoomRunRequest(room_id=yours.id, id=running.id), metadata=b
                ),
                rooms.DeleteRoom(room_pb2.DeleteRoomRequest(id=mine.id), metadata=b),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await call
                assert failure.value.code() == grpc.StatusCode.NOT_FOUND, failure.value
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                await rooms.StreamRoom(
                    room_pb2.StreamRoomRequest(room_id=mine.id), metadata=b
                ).read()
            assert streamed.value.code() == grpc.StatusCode.NOT_FOUND
            listed = await rooms.ListRooms(room_pb2.ListRoomsRequest(), metadata=b)
            assert mine.id not in [r.id for r in listed.rooms]

            # The same through the edge.
            base = f"http://127.0.0.1:{ports.http}"
            async with httpx.AsyncClient(base_url=base, timeout=10, headers=dict(b)) as http:
                refused = {
                    "leave alice": await http.post(
                        f"/v1/rooms/{mine.id}/leave", json={"participant_id": "alice"}
                    ),
                    "leave agent": await http.post(
                        f"/v1/rooms/{mine.id}/leave", json={"agent_id": slow.id}
                    ),
                    "get run": await http.get(f"/v1/rooms/{mine.id}/runs/{running.id}"),
                    "get run in b's room": await http.get(
                        f"/v1/rooms/{yours.id}/runs/{running.id}"
                    ),
                    "cancel run": await http.post(
                        f"/v1/rooms/{mine.id}/runs/{running.id}:cancel", json={}
                    ),
                    "cancel run in b's room": await http.post(
                        f"/v1/rooms/{yours.id}/runs/{running.id}:cancel", json={}
                    ),
                    "get room": await http.get(f"/v1/rooms/{mine.id}"),
                    "history": await http.get(f"/v1/rooms/{mine.id}/history"),
                }
                for what, response in refused.items():
                    assert response.status_code == 404, (what, response.text)
                    assert response.json()["details"][0]["reason"] == "NOT_FOUND", what

            # Nothing of a's changed: its members are all there and its run
            # is still running (b's cancels reached nothing).
            owned = await rooms.GetRoom(room_pb2.GetRoomRequest(id=mine.id), metadata=a)
            assert [m.agent_id or m.participant_id for m in owned.members] == ["alice", slow.id]
            still = await rooms.GetRoomRun(
                room_pb2.GetRoomRunRequest(room_id=mine.id, id=running.id), metadata=a
            )
            assert still.status == run_pb2.RUN_STATUS_RUNNING, still
            await rooms.CancelRoomRun(
                room_pb2.CancelRoomRunRequest(room_id=mine.id, id=running.id), metadata=a
            )

            # Another tenant's agent cannot be made a member.
            theirs = await agent_in(agents, a)
            with pytest.raises(grpc.aio.AioRpcError) as foreign:
                await rooms.CreateRoom(
                    room_pb2.CreateRoomRequest(
                        room=room_pb2.Room(
                            display_name="b's",
                            members=[room_pb2.RoomMember(agent_id=theirs, role=WORKER)],
                        )
                    ),
                    metadata=b,
                )
            assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
            missing_scope = (
                ("authorization", f"Bearer {signer.token(tenant='tenant-a', scope='rooms.read')}"),
            )
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await rooms.Say(
                    room_pb2.SayRequest(room_id=mine.id, participant_id="alice", text="x"),
                    metadata=missing_scope,
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        edge.stop()
        assert server.stop() == 0
