"""Working memory end to end: gRPC against the real server, REST through
Envoy (the fixed shapes), bad input, tenant isolation with JWTs (on SQLite
and on PostgreSQL), and an agent run that calls memory_set and memory_get."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from aster.server.rpc.convert import dict_to_struct
from aster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    room_pb2,
    room_pb2_grpc,
    run_pb2,
    session_pb2,
    session_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
)
from tests.auth_helpers import Signer, auth_env
from tests.chat_helpers import scripted_agent
from tests.conftest import DatabaseFor, Stack
from tests.processes import Ports, Process, start_edge, start_server
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode


@pytest.fixture
def stack_under_test(any_stack: Stack) -> Stack:
    """Every test here that uses `channel` or `http` runs on SQLite and on PostgreSQL."""
    return any_stack


@pytest.fixture
def memory(channel: grpc.aio.Channel) -> memory_pb2_grpc.MemoryServiceStub:
    return memory_pb2_grpc.MemoryServiceStub(channel)


@pytest.fixture
def agents(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


def value(data: object) -> struct_pb2.Value:
    result = struct_pb2.Value()
    json_format.ParseDict(data, result)
    return result


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_agent(agents: agent_pb2_grpc.AgentServiceStub) -> str:
    agent = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="mem"))
    )
    return agent.id


def set_request(
    key: str, data: object, agent_id: str = "", ttl: int = 0, etag: str = "", **fields: bool
) -> memory_pb2.SetWorkingMemoryRequest:
    entry = memory_pb2.WorkingMemoryEntry(
        key=key, value=value(data), agent_id=agent_id, ttl_seconds=ttl, etag=etag
    )
    return memory_pb2.SetWorkingMemoryRequest(entry=entry, **fields)


# gRPC -------------------------------------------------------------------------


async def test_crud_and_compare_and_set_over_grpc(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent_id = await new_agent(agents)
    created = await memory.SetWorkingMemory(set_request("plan", {"steps": [1, 2]}, agent_id))
    assert created.id.startswith("wme_")
    assert (created.key, created.agent_id, created.session_id) == ("plan", agent_id, "")
    assert json_format.MessageToDict(created.value) == {"steps": [1, 2]}
    assert not created.HasField("expire_time")
    assert created.etag

    fetched = await memory.GetWorkingMemoryEntry(
        memory_pb2.GetWorkingMemoryEntryRequest(id=created.id)
    )
    assert fetched == created

    # Set again is an upsert: same id, new etag
    second = await memory.SetWorkingMemory(set_request("plan", "v2", agent_id, etag=created.etag))
    assert (second.id, second.value.string_value) == (created.id, "v2")
    assert second.etag != created.etag

    # the first etag is stale now everywhere
    err = await expect_error(
        memory.SetWorkingMemory(set_request("plan", "v3", agent_id, etag=created.etag)),
        Code.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    await expect_error(
        memory.UpdateWorkingMemoryEntry(
            memory_pb2.UpdateWorkingMemoryEntryRequest(
                entry=memory_pb2.WorkingMemoryEntry(
                    id=created.id, value=value("v3"), etag=created.etag
                )
            )
        ),
        Code.ABORTED,
    )
    await expect_error(
        memory.DeleteWorkingMemoryEntry(
            memory_pb2.DeleteWorkingMemoryEntryRequest(id=created.id, etag=created.etag)
        ),
        Code.ABORTED,
    )
    await expect_error(
        memory.SetWorkingMemory(set_request("plan", 0, agent_id, if_absent=True)),
        Code.ALREADY_EXISTS,
    )

    updated = await memory.UpdateWorkingMemoryEntry(
        memory_pb2.UpdateWorkingMemoryEntryRequest(
            entry=memory_pb2.WorkingMemoryEntry(
                id=created.id, value=value([True, None]), ttl_seconds=3600, etag=second.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["value"]),
        )
    )
    # only the masked field changed
    assert json_format.MessageToDict(updated.value) == [True, None]
    assert updated.ttl_seconds == 0

    await memory.SetWorkingMemory(set_request("plan-b", 1, agent_id))
    await memory.SetWorkingMemory(set_request("other", 2, agent_id))
    listed = await memory.ListWorkingMemoryEntries(
        memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent_id, prefix="plan")
    )
    assert [e.key for e in listed.entries] == ["plan", "plan-b"]
    assert listed.next_page_token == ""

    await memory.DeleteWorkingMemoryEntry(
        memory_pb2.DeleteWorkingMemoryEntryRequest(id=created.id, etag=updated.etag)
    )
    await expect_error(
        memory.GetWorkingMemoryEntry(memory_pb2.GetWorkingMemoryEntryRequest(id=created.id)),
        Code.NOT_FOUND,
    )
    cleared = await memory.ClearWorkingMemory(
        memory_pb2.ClearWorkingMemoryRequest(agent_id=agent_id)
    )
    assert cleared.deleted_count == 2
    empty = await memory.ListWorkingMemoryEntries(
        memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent_id)
    )
    assert list(empty.entries) == []


async def test_ttl_expiry_over_grpc(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent_id = await new_agent(agents)
    short = await memory.SetWorkingMemory(set_request("short", "bye", agent_id, ttl=1))
    await memory.SetWorkingMemory(set_request("long", "stay", agent_id, ttl=3600))
    assert short.HasField("expire_time")
    assert short.expire_time.ToDatetime() > short.update_time.ToDatetime()
    await memory.GetWorkingMemoryEntry(memory_pb2.GetWorkingMemoryEntryRequest(id=short.id))
    await asyncio.sleep(1.3)
    await expect_error(
        memory.GetWorkingMemoryEntry(memory_pb2.GetWorkingMemoryEntryRequest(id=short.id)),
        Code.NOT_FOUND,
    )
    listed = await memory.ListWorkingMemoryEntries(
        memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent_id)
    )
    assert [e.key for e in listed.entries] == ["long"]


async def test_pagination_over_grpc(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent_id = await new_agent(agents)
    keys = [f"item/{i:02d}" for i in range(7)]
    for key in reversed(keys):
        await memory.SetWorkingMemory(set_request(key, key, agent_id))
    seen, token, pages = [], "", 0
    while True:
        page = await memory.ListWorkingMemoryEntries(
            memory_pb2.ListWorkingMemoryEntriesRequest(
                agent_id=agent_id, prefix="item/", page_size=3, page_token=token
            )
        )
        seen += [e.key for e in page.entries]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (keys, 3)


async def test_bad_input_over_grpc(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent_id = await new_agent(agents)
    cases = [
        (memory_pb2.SetWorkingMemoryRequest(), "entry"),
        (set_request("", 1, agent_id), "entry.key"),
        (set_request("bad key", 1, agent_id), "entry.key"),
        (set_request("k", 1, agent_id, ttl=-5), "entry.ttl_seconds"),
        (set_request("k", "x" * 70_000, agent_id), "entry.value"),
        (set_request("k", 1, "Not An Id"), "entry.agent_id"),
        (
            memory_pb2.SetWorkingMemoryRequest(
                entry=memory_pb2.WorkingMemoryEntry(key="k", agent_id=agent_id)
            ),
            "entry.value",
        ),
        (
            memory_pb2.SetWorkingMemoryRequest(
                entry=memory_pb2.WorkingMemoryEntry(
                    key="k", value=struct_pb2.Value(number_value=float("nan"))
                )
            ),
            "entry.value",
        ),
    ]
    for request, field in cases:
        err = await expect_error(memory.SetWorkingMemory(request), Code.INVALID_ARGUMENT)
        assert error_info(err).metadata["field"] == field, (field, err.details())
        assert field in (err.details() or "")
    err = await expect_error(
        memory.SetWorkingMemory(set_request("k", 1, "agt-missing")), Code.NOT_FOUND
    )
    assert "agt-missing" in (err.details() or "")
    await expect_error(
        memory.ListWorkingMemoryEntries(
            memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent_id, page_size=-1)
        ),
        Code.INVALID_ARGUMENT,
    )
    await expect_error(
        memory.ListWorkingMemoryEntries(
            memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent_id, page_token="garbage!")
        ),
        Code.INVALID_ARGUMENT,
    )
    await expect_error(
        memory.ClearWorkingMemory(memory_pb2.ClearWorkingMemoryRequest(session_id="ses-missing")),
        Code.NOT_FOUND,
    )
    entry = await memory.SetWorkingMemory(set_request("k", 1, agent_id))
    err = await expect_error(
        memory.UpdateWorkingMemoryEntry(
            memory_pb2.UpdateWorkingMemoryEntryRequest(
                entry=memory_pb2.WorkingMemoryEntry(id=entry.id, key="renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["key"]),
            )
        ),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "update_mask"


# REST through Envoy -----------------------------------------------------------


async def test_fixed_rest_shapes(http: httpx.AsyncClient) -> None:
    agent = (await http.post("/v1/agents", json={"display_name": "rest-mem"})).json()
    posted = await http.post(
        "/v1/memory/working",
        json={
            "key": "prefs:color",
            "value": {"favorite": "blue", "shades": [1, 2.5]},
            "ttl_seconds": 3600,
            "agent_id": agent["id"],
        },
    )
    assert posted.status_code == 200, posted.text
    entry = posted.json()
    assert set(entry) >= {
        "id",
        "key",
        "value",
        "ttl_seconds",
        "agent_id",
        "session_id",
        "room_id",
        "expire_time",
        "create_time",
        "update_time",
        "etag",
        "writer",
    }
    assert entry["value"] == {"favorite": "blue", "shades": [1, 2.5]}
    assert (entry["key"], entry["ttl_seconds"], entry["agent_id"]) == (
        "prefs:color",
        3600,
        agent["id"],
    )
    for key, data in [("prefs:size", None), ("prefs:list", [1, "two"]), ("misc", "x")]:
        ok = await http.post(
            "/v1/memory/working", json={"key": key, "value": data, "agent_id": agent["id"]}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["value"] == data

    listed = await http.get(
        "/v1/memory/working", params={"agent_id": agent["id"], "prefix": "prefs:"}
    )
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert set(body) == {"entries", "next_page_token"}
    assert [e["key"] for e in body["entries"]] == ["prefs:color", "prefs:list", "prefs:size"]
    assert body["entries"][0] == entry

    got = await http.get(f"/v1/memory/working/{entry['id']}")
    assert got.json() == entry

    patched = await http.patch(
        f"/v1/memory/working/{entry['id']}",
        params={"update_mask": "value"},
        json={"value": "green", "etag": entry["etag"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["value"] == "green"
    stale = await http.patch(
        f"/v1/memory/working/{entry['id']}", json={"value": "red", "etag": entry["etag"]}
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["code"] == 10

    # set-if-absent of a taken key
    taken = await http.post(
        "/v1/memory/working",
        params={"if_absent": "true"},
        json={"key": "misc", "value": 1, "agent_id": agent["id"]},
    )
    assert taken.status_code == 409 and taken.json()["code"] == 6, taken.text

    deleted = await http.delete(f"/v1/memory/working/{entry['id']}")
    assert (deleted.status_code, deleted.json()) == (200, {})
    cleared = await http.post("/v1/memory/working/clear", json={"agent_id": agent["id"]})
    assert cleared.json() == {"deleted_count": 3}

    # the tenant's shared scope: no scope id
    shared_key = unique("shared")
    ok = await http.post("/v1/memory/working", json={"key": shared_key, "value": True})
    assert ok.json()["agent_id"] == ""
    shared = (await http.get("/v1/memory/working", params={"prefix": shared_key})).json()
    assert [e["value"] for e in shared["entries"]] == [True]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ("{not json", 400, ""),
        ('{"key": "k", "value": 1, "ttl_seconds": "soon"}', 400, ""),
        ('{"key": "k", "value": 1, "agent_id": 7}', 400, ""),
        ('{"key": "k"}', 400, "entry.value"),
        ('{"value": 1}', 400, "entry.key"),
        ('{"key": "a b", "value": 1}', 400, "entry.key"),
        ('{"key": "k", "value": 1, "ttl_seconds": -1}', 400, "entry.ttl_seconds"),
        ('{"key": "k", "value": 1, "agent_id": "agt-nobody"}', 404, "agt-nobody"),
        ('{"key": "k", "value": 1, "session_id": "ses-nobody"}', 404, "ses-nobody"),
    ],
)
async def test_bad_input_over_rest(
    http: httpx.AsyncClient, body: str, status: int, text: str
) -> None:
    response = await http.post(
        "/v1/memory/working", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    if text:
        assert text in response.json()["message"], response.text


async def test_rest_errors_for_unknown_ids(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/memory/working/wme_missing")).status_code == 404
    assert (await http.delete("/v1/memory/working/wme_missing")).status_code == 404
    bad = await http.get("/v1/memory/working/Not%20An%20Id")
    assert bad.status_code == 400, bad.text
    listed = await http.get("/v1/memory/working", params={"agent_id": "agt-nobody"})
    assert listed.status_code == 404, listed.text


# Builtin tools in a run -------------------------------------------------------


async def test_agent_run_sets_then_gets_its_memory(
    agents: agent_pb2_grpc.AgentServiceStub,
    memory: memory_pb2_grpc.MemoryServiceStub,
) -> None:
    script = [
        {
            "tool_calls": [
                {
                    "name": "memory_set",
                    "arguments": {"key": "user:city", "value": {"city": "Oslo", "since": 2020}},
                }
            ]
        },
        {"tool_calls": [{"name": "memory_get", "arguments": {"key": "user:city"}}]},
        {
            "tool_calls": [
                {"name": "memory_get", "arguments": {"key": "user:city", "scope": "session"}}
            ]
        },
        {"text": "Noted."},
    ]
    agent = await scripted_agent(agents, script=script, tools=["memory_set", "memory_get"])
    events = [
        e
        async for e in agents.Chat(
            agent_pb2.ChatRequest(agent_id=agent.id, message="I live in Oslo")
        )
    ]
    assert events[-1].run_finished.status == run_pb2.RUN_STATUS_COMPLETED, events[-1]
    results = [e.tool_result for e in events if e.WhichOneof("event") == "tool_result"]
    assert [r.error for r in results] == ["", "", ""]
    stored, read, session_read = (json_format.MessageToDict(r.output) for r in results)
    assert stored["key"] == "user:city" and stored["etag"]
    assert read["found"] is True
    assert read["value"] == {"city": "Oslo", "since": 2020}
    assert read["etag"] == stored["etag"]
    # the session scope is another scope: nothing there
    assert session_read["found"] is False

    # the entry is in the agent's scope, with who wrote it
    listed = await memory.ListWorkingMemoryEntries(
        memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent.id)
    )
    (entry,) = listed.entries
    run_id, session_id = events[0].run_id, events[0].session_id
    assert json_format.MessageToDict(entry.value) == {"city": "Oslo", "since": 2020}
    assert entry.writer.agent_id == agent.id
    assert entry.writer.run_id == run_id
    assert entry.writer.session_id == session_id
    assert entry.writer.tool_call_id.startswith("call_")
    assert entry.writer.principal == ""


async def test_memory_tools_need_a_run(channel: grpc.aio.Channel) -> None:
    tools = tool_pb2_grpc.ToolServiceStub(channel)
    result = await tools.ExecuteTool(
        tool_pb2.ExecuteToolRequest(tool_id="memory_get", arguments=dict_to_struct({"key": "k"}))
    )
    assert "only be called by an agent during a run" in result.error


# Tenant isolation -------------------------------------------------------------


@dataclass
class JwtStack:
    ports: Ports
    server: Process
    edge: Process
    signer: Signer

    def metadata(self, tenant: str, scope: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.signer.token(tenant=tenant, scope=scope)}"),)


ALL = "memory.read memory.write agents.read agents.write sessions.write rooms.write"


@pytest.fixture(scope="module")
def jwt_stack(
    tmp_path_factory: pytest.TempPathFactory, database_for: DatabaseFor
) -> Iterator[JwtStack]:
    """A server with JWTs and its edge, on SQLite, then on PostgreSQL."""
    data_dir: Path = tmp_path_factory.mktemp("memw-jwt")
    signer = Signer()
    env = auth_env(
        signer.write_jwks(data_dir / "jwks.json"),
        ASTER_RATE_LIMIT_RPS="1000",
        ASTER_RATE_LIMIT_BURST="1000",
        **database_for("memw_jwt"),
    )
    ports = Ports()
    server = start_server(ports, data_dir, **env)
    try:
        edge = start_edge(ports, data_dir, **env)
    except BaseException:
        server.stop()
        raise
    yield JwtStack(ports, server, edge, signer)
    edge.stop()
    assert server.stop() == 0


@pytest.fixture
async def jwt_channel(jwt_stack: JwtStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{jwt_stack.ports.grpc}") as chan:
        yield chan


async def test_tenants_never_see_each_others_memory(
    jwt_stack: JwtStack, jwt_channel: grpc.aio.Channel
) -> None:
    memory = memory_pb2_grpc.MemoryServiceStub(jwt_channel)
    agents = agent_pb2_grpc.AgentServiceStub(jwt_channel)
    a, b = jwt_stack.metadata("tenant-a", ALL), jwt_stack.metadata("tenant-b", ALL)
    agent = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="a's")), metadata=a
    )
    mine = await memory.SetWorkingMemory(set_request("secret", "a only", agent.id), metadata=a)
    shared = await memory.SetWorkingMemory(set_request("shared", "a's tenant"), metadata=a)
    assert mine.writer.principal == "user-1"

    for call in (
        memory.GetWorkingMemoryEntry(
            memory_pb2.GetWorkingMemoryEntryRequest(id=mine.id), metadata=b
        ),
        memory.UpdateWorkingMemoryEntry(
            memory_pb2.UpdateWorkingMemoryEntryRequest(
                entry=memory_pb2.WorkingMemoryEntry(id=mine.id, value=value(1))
            ),
            metadata=b,
        ),
        memory.DeleteWorkingMemoryEntry(
            memory_pb2.DeleteWorkingMemoryEntryRequest(id=shared.id), metadata=b
        ),
        memory.SetWorkingMemory(set_request("secret", "b", agent.id), metadata=b),
        memory.ListWorkingMemoryEntries(
            memory_pb2.ListWorkingMemoryEntriesRequest(agent_id=agent.id), metadata=b
        ),
        memory.ClearWorkingMemory(
            memory_pb2.ClearWorkingMemoryRequest(agent_id=agent.id), metadata=b
        ),
    ):
        await expect_error(call, Code.NOT_FOUND)
    # Nor can b use a's session or room as a scope: NOT_FOUND, as for ids
    # that exist nowhere.
    session = await session_pb2_grpc.SessionServiceStub(jwt_channel).CreateSession(
        session_pb2.CreateSessionRequest(session=session_pb2.Session(agent_id=agent.id)),
        metadata=a,
    )
    room = await room_pb2_grpc.RoomServiceStub(jwt_channel).CreateRoom(
        room_pb2.CreateRoomRequest(
            room=room_pb2.Room(display_name="a's", members=[room_pb2.RoomMember(agent_id=agent.id)])
        ),
        metadata=a,
    )
    for field, scope_id in (("session_id", session.id), ("room_id", room.id)):
        entry = memory_pb2.WorkingMemoryEntry(key="k", value=value(1), **{field: scope_id})
        assert (
            await memory.SetWorkingMemory(
                memory_pb2.SetWorkingMemoryRequest(entry=entry), metadata=a
            )
        ).key == "k"
        for call in (
            memory.SetWorkingMemory(memory_pb2.SetWorkingMemoryRequest(entry=entry), metadata=b),
            memory.ListWorkingMemoryEntries(
                memory_pb2.ListWorkingMemoryEntriesRequest(**{field: scope_id}), metadata=b
            ),
            memory.ClearWorkingMemory(
                memory_pb2.ClearWorkingMemoryRequest(**{field: scope_id}), metadata=b
            ),
        ):
            error = await expect_error(call, Code.NOT_FOUND)
            assert scope_id in (error.details() or "")
    # b's shared scope is its own
    listed = await memory.ListWorkingMemoryEntries(
        memory_pb2.ListWorkingMemoryEntriesRequest(), metadata=b
    )
    assert list(listed.entries) == []
    cleared = await memory.ClearWorkingMemory(memory_pb2.ClearWorkingMemoryRequest(), metadata=b)
    assert cleared.deleted_count == 0
    # a's entries are intact
    for entry in (mine, shared):
        again = await memory.GetWorkingMemoryEntry(
            memory_pb2.GetWorkingMemoryEntryRequest(id=entry.id), metadata=a
        )
        assert again.value == entry.value

    # through the edge too
    base = f"http://127.0.0.1:{jwt_stack.ports.http}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        headers_b = dict(b)
        assert (
            await http.get(f"/v1/memory/working/{mine.id}", headers=headers_b)
        ).status_code == 404
        for field, scope_id in (
            ("agent_id", agent.id),
            ("session_id", session.id),
            ("room_id", room.id),
        ):
            refused = await http.post(
                "/v1/memory/working",
                json={"key": "k", "value": 1, field: scope_id},
                headers=headers_b,
            )
            assert refused.status_code == 404, (field, refused.text)
        listed_b = await http.get("/v1/memory/working", headers=headers_b)
        assert listed_b.json() == {"entries": [], "next_page_token": ""}
        assert (await http.get("/v1/memory/working")).status_code == 401


async def test_memory_scopes_are_enforced(
    jwt_stack: JwtStack, jwt_channel: grpc.aio.Channel
) -> None:
    memory = memory_pb2_grpc.MemoryServiceStub(jwt_channel)
    reader = jwt_stack.metadata("tenant-r", "memory.read")
    await memory.ListWorkingMemoryEntries(
        memory_pb2.ListWorkingMemoryEntriesRequest(), metadata=reader
    )
    await expect_error(
        memory.SetWorkingMemory(set_request("k", 1), metadata=reader), Code.PERMISSION_DENIED
    )
    await expect_error(
        memory.ListWorkingMemoryEntries(memory_pb2.ListWorkingMemoryEntriesRequest()),
        Code.UNAUTHENTICATED,
    )


async def test_room_scope_needs_an_existing_room(http: httpx.AsyncClient) -> None:
    agent = (await http.post("/v1/agents", json={"display_name": "room-mem"})).json()
    room = await http.post(
        "/v1/rooms",
        json={
            "display_name": "mem",
            "members": [{"agent_id": agent["id"], "role": "leader"}],
        },
    )
    assert room.status_code == 200, room.text
    room_id = room.json()["id"]
    ok = await http.post(
        "/v1/memory/working", json={"key": "topic", "value": "launch", "room_id": room_id}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["room_id"] == room_id
    listed = (await http.get("/v1/memory/working", params={"room_id": room_id})).json()
    assert [e["value"] for e in listed["entries"]] == ["launch"]
    missing = await http.post(
        "/v1/memory/working", json={"key": "topic", "value": 1, "room_id": "room-nowhere"}
    )
    assert missing.status_code == 404, missing.text
    assert "room-nowhere" in missing.json()["message"]
