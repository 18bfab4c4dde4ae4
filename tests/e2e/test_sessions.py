"""SessionService end to end: CRUD, history, checkpoints, resume, fork, stats."""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2, session_pb2, session_pb2_grpc
from tests.chat_helpers import scripted_agent, text_of
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode


@pytest.fixture
def agents(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


@pytest.fixture
def sessions(channel: grpc.aio.Channel) -> session_pb2_grpc.SessionServiceStub:
    return session_pb2_grpc.SessionServiceStub(channel)


async def say(
    agents: agent_pb2_grpc.AgentServiceStub, agent_id: str, session_id: str, text: str
) -> list[run_pb2.ChatEvent]:
    request = agent_pb2.ChatRequest(agent_id=agent_id, message=text, session_id=session_id)
    return [e async for e in agents.Chat(request)]


async def contents(sessions: session_pb2_grpc.SessionServiceStub, session_id: str) -> list[str]:
    page = await sessions.ListMessages(session_pb2.ListMessagesRequest(session_id=session_id))
    return [m.content for m in page.messages]


async def test_session_crud(
    agents: agent_pb2_grpc.AgentServiceStub, sessions: session_pb2_grpc.SessionServiceStub
) -> None:
    agent = await scripted_agent(agents)
    created = await sessions.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(agent_id=agent.id, display_name="s1", labels={"a": "b"})
        )
    )
    assert created.id.startswith("ses_")
    assert created.etag
    got = await sessions.GetSession(session_pb2.GetSessionRequest(id=created.id))
    assert got == created
    updated = await sessions.UpdateSession(
        session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(id=created.id, display_name="renamed", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert (updated.display_name, dict(updated.labels)) == ("renamed", {"a": "b"})
    await expect_error(
        sessions.UpdateSession(
            session_pb2.UpdateSessionRequest(
                session=session_pb2.Session(id=created.id, display_name="x", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        Code.ABORTED,
    )
    listed = await sessions.ListSessions(
        session_pb2.ListSessionsRequest(filter=f"agent_id={agent.id}")
    )
    assert [s.id for s in listed.sessions] == [created.id]
    await sessions.DeleteSession(session_pb2.DeleteSessionRequest(id=created.id))
    await expect_error(
        sessions.GetSession(session_pb2.GetSessionRequest(id=created.id)), Code.NOT_FOUND
    )


async def test_bad_session_requests(sessions: session_pb2_grpc.SessionServiceStub) -> None:
    err = await expect_error(
        sessions.CreateSession(
            session_pb2.CreateSessionRequest(session=session_pb2.Session(agent_id="agt_missing"))
        ),
        Code.NOT_FOUND,
    )
    assert "agt_missing" in (err.details() or "")
    err = await expect_error(
        sessions.CreateSession(session_pb2.CreateSessionRequest(session=session_pb2.Session())),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "session.agent_id"
    await expect_error(
        sessions.ListMessages(session_pb2.ListMessagesRequest(session_id="ses_missing")),
        Code.NOT_FOUND,
    )
    await expect_error(
        sessions.ListSessions(session_pb2.ListSessionsRequest(filter="colour=red")),
        Code.INVALID_ARGUMENT,
    )


async def test_resume_rolls_back_to_a_checkpoint(
    agents: agent_pb2_grpc.AgentServiceStub, sessions: session_pb2_grpc.SessionServiceStub
) -> None:
    agent = await scripted_agent(agents)
    first = await say(agents, agent.id, "", "one")
    session_id = first[0].session_id
    await say(agents, agent.id, session_id, "two")
    checkpoints = await sessions.ListCheckpoints(
        session_pb2.ListCheckpointsRequest(session_id=session_id)
    )
    one = checkpoints.checkpoints[0]
    resumed = await sessions.ResumeSession(
        session_pb2.ResumeSessionRequest(session_id=session_id, checkpoint_id=one.id)
    )
    assert resumed.checkpoint.id == one.id
    assert await contents(sessions, session_id) == ["one", "Echo: one"]
    # The conversation continues from the checkpoint.
    again = await say(agents, agent.id, session_id, "three")
    assert text_of(again) == "Echo: three"
    assert await contents(sessions, session_id) == ["one", "Echo: one", "three", "Echo: three"]
    await expect_error(
        sessions.ResumeSession(
            session_pb2.ResumeSessionRequest(session_id=session_id, checkpoint_id="ckp_missing")
        ),
        Code.NOT_FOUND,
    )


async def test_fork_copies_history_up_to_a_checkpoint(
    agents: agent_pb2_grpc.AgentServiceStub, sessions: session_pb2_grpc.SessionServiceStub
) -> None:
    agent = await scripted_agent(agents)
    first = await say(agents, agent.id, "", "one")
    parent_id = first[0].session_id
    await say(agents, agent.id, parent_id, "two")
    checkpoints = await sessions.ListCheckpoints(
        session_pb2.ListCheckpointsRequest(session_id=parent_id)
    )
    child = await sessions.ForkSession(
        session_pb2.ForkSessionRequest(
            session_id=parent_id, checkpoint_id=checkpoints.checkpoints[0].id
        )
    )
    assert child.parent_session_id == parent_id
    assert child.parent_checkpoint_id == checkpoints.checkpoints[0].id
    assert await contents(sessions, child.id) == ["one", "Echo: one"]
    await say(agents, agent.id, child.id, "branch")
    assert await contents(sessions, child.id) == ["one", "Echo: one", "branch", "Echo: branch"]
    assert len(await contents(sessions, parent_id)) == 4  # the parent is untouched


async def test_sessions_over_rest(http: httpx.AsyncClient) -> None:
    agent = (await http.post("/v1/agents", json={"display_name": "rest-sessions"})).json()
    session = (await http.post("/v1/sessions", json={"agent_id": agent["id"]})).json()
    ran = await http.post(
        f"/v1/agents/{agent['id']}/run", json={"message": "hello", "session_id": session["id"]}
    )
    assert ran.status_code == 200, ran.text
    messages = (await http.get(f"/v1/sessions/{session['id']}/messages")).json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("MESSAGE_ROLE_USER", "hello"),
        ("MESSAGE_ROLE_ASSISTANT", "Echo: hello"),
    ]
    stats = (await http.get(f"/v1/sessions/{session['id']}/stats")).json()
    assert stats["message_count"] == "2"  # int64 prints as a JSON string
    assert stats["run_count"] == "1"
    missing = await http.get("/v1/sessions/ses_missing")
    assert missing.status_code == 404
