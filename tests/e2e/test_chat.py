"""Runs and chat end to end: streaming over gRPC and SSE, resumable streams,
cancellation, double-texting, tools, limits and bad input."""

from __future__ import annotations

import asyncio
import http.server
import json
import random
import threading

import grpc
import httpx
import pytest
from google.protobuf import json_format

from aster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    run_pb2,
    session_pb2,
    session_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
)
from tests.chat_helpers import (
    assert_sequence,
    event_from_json,
    kinds,
    scripted_agent,
    sse_events,
    text_of,
    words,
)
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode
COMPLETED = run_pb2.RUN_STATUS_COMPLETED
CANCELLED = run_pb2.RUN_STATUS_CANCELLED
FAILED = run_pb2.RUN_STATUS_FAILED


@pytest.fixture
def agents(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


@pytest.fixture
def sessions(channel: grpc.aio.Channel) -> session_pb2_grpc.SessionServiceStub:
    return session_pb2_grpc.SessionServiceStub(channel)


async def chat(
    agents: agent_pb2_grpc.AgentServiceStub, agent_id: str, message: str, **fields: object
) -> list[run_pb2.ChatEvent]:
    request = agent_pb2.ChatRequest(agent_id=agent_id, message=message, **fields)  # type: ignore[arg-type]
    return [event async for event in agents.Chat(request)]


async def wait_terminal(
    agents: agent_pb2_grpc.AgentServiceStub, run_id: str, limit_s: float = 20
) -> run_pb2.Run:
    async with asyncio.timeout(limit_s):
        while True:
            run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
            if run.status in (COMPLETED, CANCELLED, FAILED):
                return run
            await asyncio.sleep(0.05)


async def test_chat_streams_a_scripted_reply(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, script=[{"text": "Hello there, friend."}])
    events = await chat(agents, agent.id, "hi")
    assert_sequence(events)
    assert kinds(events) == [
        "run_started",
        "text_message_start",
        "text_delta",
        "text_delta",
        "text_delta",
        "text_message_end",
        "usage",
        "run_finished",
    ]
    assert text_of(events) == "Hello there, friend."
    finished = events[-1].run_finished
    assert finished.status == COMPLETED
    assert finished.result.content == "Hello there, friend."
    assert finished.result.role == run_pb2.MESSAGE_ROLE_ASSISTANT
    assert events[0].session_id.startswith("ses_")
    usage = [e.usage for e in events if e.WhichOneof("event") == "usage"][-1]
    assert usage.output_tokens == 3
    run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=events[0].run_id))
    assert run.status == COMPLETED
    assert run.result.content == "Hello there, friend."
    assert run.input.content == "hi"
    assert run.last_seq == len(events)
    assert run.usage.output_tokens == 3


async def test_conversation_continues_in_a_session(
    agents: agent_pb2_grpc.AgentServiceStub, sessions: session_pb2_grpc.SessionServiceStub
) -> None:
    agent = await scripted_agent(agents)  # echoes the last user message
    first = await chat(agents, agent.id, "one")
    session_id = first[0].session_id
    second = await chat(agents, agent.id, "two", session_id=session_id)
    assert text_of(second) == "Echo: two"
    assert second[0].session_id == session_id
    history = await sessions.ListMessages(session_pb2.ListMessagesRequest(session_id=session_id))
    assert [(m.role, m.content) for m in history.messages] == [
        (run_pb2.MESSAGE_ROLE_USER, "one"),
        (run_pb2.MESSAGE_ROLE_ASSISTANT, "Echo: one"),
        (run_pb2.MESSAGE_ROLE_USER, "two"),
        (run_pb2.MESSAGE_ROLE_ASSISTANT, "Echo: two"),
    ]
    newest = await sessions.ListMessages(
        session_pb2.ListMessagesRequest(
            session_id=session_id, order=session_pb2.MESSAGE_ORDER_NEWEST_FIRST, page_size=1
        )
    )
    assert [m.content for m in newest.messages] == ["Echo: two"]
    assert newest.next_page_token
    checkpoints = await sessions.ListCheckpoints(
        session_pb2.ListCheckpointsRequest(session_id=session_id)
    )
    assert [c.turn for c in checkpoints.checkpoints] == [1, 2]
    assert [c.message_count for c in checkpoints.checkpoints] == [2, 4]
    stats = await sessions.GetSessionStats(
        session_pb2.GetSessionStatsRequest(session_id=session_id)
    )
    assert (stats.message_count, stats.run_count) == (4, 2)
    assert stats.usage.output_tokens > 0


async def test_run_agent_waits_and_send_message_returns_at_once(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    agent = await scripted_agent(agents, script=[{"text": "done and dusted"}], delay_ms=30)
    reply = await agents.RunAgent(agent_pb2.RunAgentRequest(agent_id=agent.id, message="go"))
    assert reply.run.status == COMPLETED
    assert reply.run.result.content == "done and dusted"
    assert reply.run.usage.output_tokens == 3
    queued = await agents.SendMessage(agent_pb2.SendMessageRequest(agent_id=agent.id, message="go"))
    assert queued.status in (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING)
    done = await wait_terminal(agents, queued.id)
    assert done.status == COMPLETED
    replay = [e async for e in agents.StreamRun(agent_pb2.StreamRunRequest(run_id=queued.id))]
    assert_sequence(replay)
    assert text_of(replay) == "done and dusted"
    listed = await agents.ListRuns(agent_pb2.ListRunsRequest(agent_id=agent.id))
    assert [r.id for r in listed.runs] == [queued.id, reply.run.id]  # newest first


async def join_with_random_drops(
    agents: agent_pb2_grpc.AgentServiceStub,
    run_id: str,
    rng: random.Random,
    seen: list[run_pb2.ChatEvent],
) -> list[run_pb2.ChatEvent]:
    """Reads the rest of the run's stream after `seen`, dropping the
    connection at random points and rejoining from the last seq seen."""
    while seen[-1].WhichOneof("event") != "run_finished":
        budget = rng.randint(1, 12)
        after = seen[-1].seq
        call = agents.StreamRun(agent_pb2.StreamRunRequest(run_id=run_id, after_seq=after))
        async for event in call:
            seen.append(event)
            budget -= 1
            if budget == 0:
                call.cancel()
                break
    return seen


async def test_resumable_stream_survives_random_disconnects(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    text = words(80)
    agent = await scripted_agent(agents, script=[{"text": text}], delay_ms=5)
    rng = random.Random(1234)
    for _ in range(3):
        call = agents.Chat(
            agent_pb2.ChatRequest(
                agent_id=agent.id, message="go", on_disconnect=run_pb2.ON_DISCONNECT_CONTINUE
            )
        )
        first = await call.read()
        call.cancel()  # walk away; the run continues
        events = await join_with_random_drops(agents, first.run_id, rng, [first])
        assert_sequence(events)
        assert text_of(events) == text
        assert events[-1].run_finished.status == COMPLETED


async def test_dropping_a_chat_cancels_the_run_by_default(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    agent = await scripted_agent(agents, script=[{"text": words(200)}], delay_ms=20)
    call = agents.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="go"))
    first = await call.read()
    await call.read()
    call.cancel()
    run = await wait_terminal(agents, first.run_id)
    assert run.status == CANCELLED
    events = [e async for e in agents.StreamRun(agent_pb2.StreamRunRequest(run_id=run.id))]
    assert events[-1].run_finished.status == CANCELLED
    assert_sequence(events)


async def test_cancel_run_from_another_client(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, script=[{"text": words(300)}], delay_ms=20)
    run = await agents.SendMessage(agent_pb2.SendMessageRequest(agent_id=agent.id, message="go"))
    await asyncio.sleep(0.3)
    cancelled = await agents.CancelRun(agent_pb2.CancelRunRequest(run_id=run.id))
    assert cancelled.status == CANCELLED
    again = await agents.CancelRun(agent_pb2.CancelRunRequest(run_id=run.id))
    assert again.status == CANCELLED


async def test_client_deadline_is_honoured(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, script=[{"text": words(300)}], delay_ms=20)
    call = agents.Chat(agent_pb2.ChatRequest(agent_id=agent.id, message="go"), timeout=0.5)
    first = await call.read()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == Code.DEADLINE_EXCEEDED
    assert (await wait_terminal(agents, first.run_id)).status == CANCELLED


async def test_double_texting_strategies(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, delay_ms=40)
    slow = await agents.SendMessage(
        agent_pb2.SendMessageRequest(agent_id=agent.id, message=words(40, "a"))
    )
    session_id = slow.session_id
    err = await expect_error(
        agents.SendMessage(
            agent_pb2.SendMessageRequest(agent_id=agent.id, message="x", session_id=session_id)
        ),
        Code.FAILED_PRECONDITION,
    )
    assert error_info(err).metadata["active_run_id"] == slow.id
    queued = await agents.SendMessage(
        agent_pb2.SendMessageRequest(
            agent_id=agent.id,
            message="queued",
            session_id=session_id,
            multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        )
    )
    assert queued.status == run_pb2.RUN_STATUS_QUEUED
    first, second = await wait_terminal(agents, slow.id), await wait_terminal(agents, queued.id)
    assert (first.status, second.status) == (COMPLETED, COMPLETED)
    assert second.start_time.ToDatetime() >= first.end_time.ToDatetime()
    assert second.result.content == "Echo: queued"
    # INTERRUPT cancels the active run, then starts.
    busy = await agents.SendMessage(
        agent_pb2.SendMessageRequest(agent_id=agent.id, message=words(100), session_id=session_id)
    )
    await asyncio.sleep(0.2)
    events = await chat(
        agents,
        agent.id,
        "now",
        session_id=session_id,
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_INTERRUPT,
    )
    assert events[-1].run_finished.status == COMPLETED
    assert text_of(events) == "Echo: now"
    assert (await wait_terminal(agents, busy.id)).status == CANCELLED


async def test_tool_loop(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    script = [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
        {"text": "The answer is 42."},
    ]
    agent = await scripted_agent(agents, script=script, tools=["calculator"])
    events = await chat(agents, agent.id, "what is six times seven?")
    assert_sequence(events)
    order = kinds(events)
    for kind in ("tool_call_start", "tool_call_args_delta", "tool_call_end", "tool_result"):
        assert kind in order
    assert order.index("tool_result") < order.index("text_message_start")
    result = next(e.tool_result for e in events if e.WhichOneof("event") == "tool_result")
    assert result.error == ""
    assert result.output.number_value == 42
    assert text_of(events) == "The answer is 42."
    assert events[-1].run_finished.status == COMPLETED


async def test_tool_errors_do_not_crash_the_run(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    script = [
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1/0"}}]},
        {"text": "Could not compute."},
    ]
    agent = await scripted_agent(agents, script=script, tools=["calculator"])
    events = await chat(agents, agent.id, "divide")
    result = next(e.tool_result for e in events if e.WhichOneof("event") == "tool_result")
    assert result.error
    assert events[-1].run_finished.status == COMPLETED


async def test_max_steps_ends_the_run_clearly(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    loop = [{"tool_calls": [{"name": "get_time", "arguments": {}}]}]
    agent = await scripted_agent(agents, script=loop, tools=["get_time"])
    events = await chat(agents, agent.id, "loop forever")
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert "max_steps" in error.message
    assert events[-1].run_finished.status == FAILED
    assert sum(1 for k in kinds(events) if k == "tool_result") == 8


async def test_provider_failure_mid_stream_fails_the_run(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    agent = await scripted_agent(
        agents,
        script=[{"text": words(20)}],
        extra={"fail": {"code": "UNAVAILABLE", "after_deltas": 5}},
    )
    events = await chat(agents, agent.id, "go")
    assert text_of(events) == words(5) + " "
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == "UNAVAILABLE"
    assert events[-1].run_finished.status == FAILED
    run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=events[0].run_id))
    assert run.status == FAILED
    assert run.error


async def test_bad_run_requests(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents)
    err = await expect_error(
        agents.RunAgent(agent_pb2.RunAgentRequest(agent_id=agent.id, message="  ")),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "message"
    err = await expect_error(
        agents.RunAgent(
            agent_pb2.RunAgentRequest(agent_id=agent.id, message="hi", session_id="ses_nope")
        ),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "session_id"
    await expect_error(
        agents.RunAgent(agent_pb2.RunAgentRequest(agent_id="agt_missing", message="hi")),
        Code.NOT_FOUND,
    )
    with_unknown_tool = await scripted_agent(agents, tools=["no_such_tool"])
    err = await expect_error(
        agents.RunAgent(agent_pb2.RunAgentRequest(agent_id=with_unknown_tool.id, message="hi")),
        Code.INVALID_ARGUMENT,
    )
    assert "no_such_tool" in (err.details() or "")
    await expect_error(agents.GetRun(agent_pb2.GetRunRequest(run_id="run_missing")), Code.NOT_FOUND)
    await expect_error(agents.ListRuns(agent_pb2.ListRunsRequest()), Code.INVALID_ARGUMENT)
    stream = agents.StreamRun(agent_pb2.StreamRunRequest(run_id="run_missing"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == Code.NOT_FOUND


async def test_agent_status_and_stats(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent = await scripted_agent(agents, script=[{"text": "a b c"}])
    idle = await agents.GetAgentStatus(agent_pb2.GetAgentStatusRequest(id=agent.id))
    assert idle.activity == agent_pb2.AGENT_ACTIVITY_IDLE
    assert idle.active_runs == 0
    await chat(agents, agent.id, "one")
    await chat(agents, agent.id, "two")
    stats = await agents.GetAgentStats(agent_pb2.GetAgentStatsRequest(id=agent.id))
    assert stats.runs_by_status["RUN_STATUS_COMPLETED"] == 2
    assert stats.usage.output_tokens == 6
    assert stats.avg_time_to_first_token_ms > 0
    status = await agents.GetAgentStatus(agent_pb2.GetAgentStatusRequest(id=agent.id))
    assert status.last_activity_time.seconds > 0


async def test_chat_over_sse_through_envoy(
    agents: agent_pb2_grpc.AgentServiceStub, http: httpx.AsyncClient
) -> None:
    text = words(30)
    agent = await scripted_agent(agents, script=[{"text": text}], delay_ms=2)
    events = [
        event_from_json(data)
        async for data in sse_events(
            http, "POST", f"/v1/agents/{agent.id}/chat", json={"message": "hello"}
        )
    ]
    assert_sequence(events)
    assert text_of(events) == text
    assert events[-1].run_finished.status == COMPLETED
    # Rejoin at random cursors over SSE: the rest of the run, exactly.
    run_id = events[0].run_id
    for after in (0, 3, len(events) // 2, len(events) - 1):
        rest = [
            event_from_json(data)
            async for data in sse_events(http, "GET", f"/v1/runs/{run_id}/stream?after_seq={after}")
        ]
        assert [e.seq for e in rest] == list(range(after + 1, len(events) + 1))


async def test_sse_disconnect_and_rejoin_through_envoy(
    agents: agent_pb2_grpc.AgentServiceStub, http: httpx.AsyncClient
) -> None:
    text = words(60)
    agent = await scripted_agent(agents, script=[{"text": text}], delay_ms=10)
    seen: list[run_pb2.ChatEvent] = []
    async for data in sse_events(
        http,
        "POST",
        f"/v1/agents/{agent.id}/chat",
        json={"message": "hello", "on_disconnect": "ON_DISCONNECT_CONTINUE"},
    ):
        seen.append(event_from_json(data))
        if len(seen) == 7:
            break
    run_id = seen[0].run_id
    rng = random.Random(7)
    while seen[-1].WhichOneof("event") != "run_finished":
        budget = rng.randint(1, 15)
        async for data in sse_events(
            http, "GET", f"/v1/runs/{run_id}/stream", params={"after_seq": seen[-1].seq}
        ):
            seen.append(event_from_json(data))
            budget -= 1
            if budget == 0:
                break
    assert_sequence(seen)
    assert text_of(seen) == text


async def test_run_errors_over_rest(http: httpx.AsyncClient) -> None:
    created = await http.post("/v1/agents", json={"display_name": "rest-runner"})
    agent_id = created.json()["id"]
    empty = await http.post(f"/v1/agents/{agent_id}/run", json={"message": ""})
    assert empty.status_code == 400
    assert empty.json()["details"][0]["metadata"]["field"] == "message"
    done = await http.post(f"/v1/agents/{agent_id}/run", json={"message": "ping"})
    assert done.status_code == 200, done.text
    run = done.json()["run"]
    assert run["status"] == "RUN_STATUS_COMPLETED"
    assert run["result"]["content"] == "Echo: ping"
    missing = await http.get("/v1/runs/run_missing")
    assert missing.status_code == 404
    cancel = await http.post(f"/v1/runs/{run['id']}/cancel", json={})
    assert cancel.json()["status"] == "RUN_STATUS_COMPLETED"


class _Weather(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        reply = json.dumps({"city": body.get("city"), "temp": 21}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        return


async def test_http_tools_are_called_by_name(channel: grpc.aio.Channel) -> None:
    weather = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Weather)
    threading.Thread(target=weather.serve_forever, daemon=True).start()
    try:
        tools = tool_pb2_grpc.ToolServiceStub(channel)
        tool = await tools.CreateTool(
            tool_pb2.CreateToolRequest(
                tool=tool_pb2.Tool(
                    name="weather",
                    description="The weather in a city.",
                    kind=tool_pb2.TOOL_KIND_HTTP,
                    http=tool_pb2.HttpToolConfig(url=f"http://127.0.0.1:{weather.server_port}/"),
                )
            )
        )
        assert tool.id != "weather"
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        script = [
            {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
            {"text": "It is 21 degrees."},
        ]
        agent = await scripted_agent(agents, script=script, tools=[tool.id])
        events = await chat(agents, agent.id, "weather in Oslo?")
        result = next(e.tool_result for e in events if e.WhichOneof("event") == "tool_result")
        assert result.error == ""
        assert json_format.MessageToDict(result.output) == {"city": "Oslo", "temp": 21}
        assert text_of(events) == "It is 21 degrees."
    finally:
        weather.shutdown()
