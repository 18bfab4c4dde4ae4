"""Workflow executions end to end: the real server (SQLite, and PostgreSQL
where marked) behind the real Envoy; REST and SSE through the edge, gRPC
through generated stubs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aster.server.rpc.convert import dict_to_struct
from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2, tool_pb2, tool_pb2_grpc, workflow_pb2_grpc
from aster.v1 import workflow_pb2 as wp
from tests.auth_helpers import Signer, auth_env
from tests.chat_helpers import scripted_agent, words
from tests.conftest import Stack
from tests.processes import Ports, start_server
from tests.rpc_errors import expect_error
from tests.unit.tools.conftest import Endpoint, endpoint, endpoint_server  # noqa: F401
from tests.workflow_helpers import (
    COMPLETED,
    TERMINAL,
    attempts,
    create_workflow,
    execute,
    is_terminal,
    sse,
    wait_state,
    wait_step,
)

Code = grpc.StatusCode
WAITING_APPROVAL = wp.EXECUTION_STATE_WAITING_APPROVAL


@pytest.fixture
async def stubs(
    any_stack: Stack,
) -> AsyncIterator[
    tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub]
]:
    async with grpc.aio.insecure_channel(any_stack.grpc_target) as channel:
        yield (
            workflow_pb2_grpc.WorkflowServiceStub(channel),
            agent_pb2_grpc.AgentServiceStub(channel),
        )


@pytest.fixture
async def rest(any_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=any_stack.http_base, timeout=30) as client:
        yield client


async def echo_tool(channel_target: str, url: str) -> str:
    """An HTTP tool that posts its arguments to `url`."""
    async with grpc.aio.insecure_channel(channel_target) as channel:
        tools = tool_pb2_grpc.ToolServiceStub(channel)
        tool = await tools.CreateTool(
            tool_pb2.CreateToolRequest(
                tool=tool_pb2.Tool(
                    name=f"echo_{uuid.uuid4().hex[:6]}",
                    description="Posts its arguments",
                    kind=tool_pb2.TOOL_KIND_HTTP,
                    parameters=dict_to_struct({"type": "object"}),
                    http=tool_pb2.HttpToolConfig(url=url),
                )
            )
        )
    return tool.id


def calc(name: str, expression: str, **fields: Any) -> dict[str, Any]:
    """A calculator tool step."""
    return {
        "name": name,
        "tool": {"tool_id": "calculator", "arguments": {"expression": expression}},
        **fields,
    }


def six_steps(agent_id: str, echo_id: str) -> list[dict[str, Any]]:
    """agent → tool → parallel → condition → loop → approval."""
    return [
        {
            "name": "draft",
            "agent": {"agent_id": agent_id, "input": "Write about {{ input.topic }}"},
            "next": "record",
        },
        {
            "name": "record",
            "tool": {"tool_id": echo_id, "arguments": {"text": "{{ steps.draft.output }}"}},
            "next": "fan",
        },
        {"name": "fan", "parallel": {"branches": ["calc_a", "calc_b"]}, "next": "check"},
        calc("calc_a", "2*3"),
        calc("calc_b", "4+1"),
        {
            "name": "check",
            "condition": {"expression": "steps.calc_a.output == 6", "then_step": "bump"},
            "next": "repeat",
        },
        calc("bump", "{{ steps.calc_a.output }} + 1"),
        {"name": "repeat", "loop": {"body": "count", "max_iterations": 3}, "next": "signoff"},
        calc("count", "1+1"),
        {"name": "signoff", "approval": {"prompt": "Ship it?"}},
    ]


async def test_six_step_workflow_over_rest_watched_live_over_sse(
    any_stack: Stack,
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    rest: httpx.AsyncClient,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    workflows, agents = stubs
    text = words(12, "tok")
    agent = await scripted_agent(agents, script=[{"text": text}], delay_ms=40)
    echo_id = await echo_tool(any_stack.grpc_target, endpoint.url("/echo"))
    created = await rest.post(
        "/v1/workflows",
        json={"display_name": "six steps", "steps": six_steps(agent.id, echo_id)},
    )
    assert created.status_code == 200, created.text
    workflow_id = created.json()["id"]

    body = {"input": {"topic": "otters"}, "idempotency_key": "first"}
    started = await rest.post(f"/v1/workflows/{workflow_id}/execute", json=body)
    assert started.status_code == 200, started.text
    execution = started.json()
    assert execution["state"] in ("EXECUTION_STATE_PENDING", "EXECUTION_STATE_RUNNING")
    assert execution["workflow_version"] == 1
    again = await rest.post(f"/v1/workflows/{workflow_id}/execute", json=body)
    assert again.json()["id"] == execution["id"]
    base = f"/v1/workflows/{workflow_id}/executions/{execution['id']}"

    async def watch_all() -> list[wp.ExecutionEvent]:
        return [e async for e in sse(rest, f"{base}/watch")]

    full = asyncio.create_task(watch_all())
    # A second watcher leaves after a few events and rejoins with its cursor.
    first: list[wp.ExecutionEvent] = []
    async for event in sse(rest, f"{base}/watch"):
        first.append(event)
        if any(e.WhichOneof("event") == "agent_event" for e in first) and len(first) >= 6:
            break
    await asyncio.sleep(0.3)
    waiting = await wait_state(workflows, workflow_id, execution["id"], {WAITING_APPROVAL})
    assert [s.step_name for s in waiting.steps][-1] == "signoff"
    rest_of: list[wp.ExecutionEvent] = []

    async def rejoin() -> None:
        async for event in sse(rest, f"{base}/watch?after_seq={first[-1].seq}"):
            rest_of.append(event)

    rejoined = asyncio.create_task(rejoin())
    await asyncio.sleep(0.3)
    approved = await rest.post(f"{base}/approve", json={"input": {"approved_by": "qa"}})
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] in ("EXECUTION_STATE_PENDING", "EXECUTION_STATE_RUNNING")
    async with asyncio.timeout(30):
        events = await full
        await rejoined

    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert [e.seq for e in first + rest_of] == seqs
    assert is_terminal(events[-1]) and events[-1].state_changed.state == COMPLETED
    assert all(e.execution_id == execution["id"] and e.workflow_id == workflow_id for e in events)
    deltas = [
        e.agent_event.chat_event.text_delta.delta
        for e in events
        if e.WhichOneof("event") == "agent_event"
        and e.agent_event.chat_event.WhichOneof("event") == "text_delta"
    ]
    assert "".join(deltas) == text
    states = [e.state_changed.state for e in events if e.WhichOneof("event") == "state_changed"]
    assert WAITING_APPROVAL in states

    final = (await rest.get(base)).json()
    assert final["state"] == "EXECUTION_STATE_COMPLETED"
    assert final["output"] == {"approved_by": "qa"}
    steps = {s["key"]: s for s in final["steps"]}
    assert steps["draft"]["output"] == text and steps["draft"]["run_id"]
    assert steps["record"]["input"] == {"text": text}
    assert steps["calc_a"]["output"] == 6 and steps["calc_b"]["output"] == 5
    assert steps["check"]["output"]["result"] is True and steps["bump"]["output"] == 7
    assert [k for k in steps if k.startswith("repeat[")] == [
        "repeat[1]/count",
        "repeat[2]/count",
        "repeat[3]/count",
    ]
    assert steps["repeat"]["output"]["iterations"] == 3
    assert steps["signoff"]["output"] == {"approved_by": "qa"}
    assert all(s["attempt"] == 1 for s in final["steps"])
    assert all(s["state"] == "STEP_EXECUTION_STATE_COMPLETED" for s in final["steps"])
    assert all(s["start_time"] and s["end_time"] for s in final["steps"])
    # The tool step ran once, with the execution's idempotency key.
    assert len(endpoint.received) == 1
    assert endpoint.last().headers["idempotency-key"] == f"{execution['id']}:record:1"
    listed = (await rest.get(f"/v1/workflows/{workflow_id}/executions")).json()
    assert [e["id"] for e in listed["executions"]] == [execution["id"]]
    assert listed["executions"][0]["steps"] == final["steps"]


async def test_suspend_resume_with_input_and_retry_policy(
    any_stack: Stack,
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    rest: httpx.AsyncClient,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows,
        [
            {"name": "nap", "wait": "1.5s", "next": "use"},
            calc("use", "{{ input.resume.factor }} * 2"),
        ],
    )
    execution = await execute(workflows, workflow.id)
    await wait_step(workflows, workflow.id, execution.id, "nap", wp.STEP_EXECUTION_STATE_WAITING)
    base = f"/v1/workflows/{workflow.id}/executions/{execution.id}"
    suspended = await rest.post(f"{base}/suspend", json={})
    assert suspended.json()["state"] == "EXECUTION_STATE_SUSPENDED"
    await asyncio.sleep(2)  # past the wait: a suspended execution does not move
    still = await workflows.GetExecution(
        wp.GetExecutionRequest(workflow_id=workflow.id, execution_id=execution.id)
    )
    assert still.state == wp.EXECUTION_STATE_SUSPENDED
    assert [s.key for s in still.steps] == ["nap"]
    resumed = await rest.post(f"{base}/resume", json={"input": {"factor": 21}})
    assert resumed.json()["state"] in ("EXECUTION_STATE_PENDING", "EXECUTION_STATE_RUNNING")
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == COMPLETED, done.error
    assert attempts(done, "use")[0].output.number_value == 42
    assert attempts(done, "nap")[-1].state == wp.STEP_EXECUTION_STATE_COMPLETED

    # Retries with backoff, then the execution fails naming the step.
    failing = await echo_tool(any_stack.grpc_target, endpoint.url("/status/500"))
    workflow = await create_workflow(
        workflows,
        [
            {
                "name": "flaky",
                "tool": {"tool_id": failing},
                "retry": {"max_attempts": 3, "initial_backoff": "0.1s", "backoff_multiplier": 2},
            }
        ],
    )
    execution = await execute(workflows, workflow.id)
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == wp.EXECUTION_STATE_FAILED
    assert "flaky" in done.error and "3 attempts" in done.error
    tries = attempts(done, "flaky")
    assert [t.attempt for t in tries] == [1, 2, 3]
    assert all(t.state == wp.STEP_EXECUTION_STATE_FAILED and t.error for t in tries)
    keys = [r.headers["idempotency-key"] for r in endpoint.received[-3:]]
    assert keys == [f"{execution.id}:flaky:{n}" for n in (1, 2, 3)]

    # A step timeout fails the attempt.
    slow = await echo_tool(any_stack.grpc_target, endpoint.url("/slow"))
    workflow = await create_workflow(
        workflows, [{"name": "late", "tool": {"tool_id": slow}, "timeout": "0.3s"}]
    )
    execution = await execute(workflows, workflow.id)
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == wp.EXECUTION_STATE_FAILED
    assert "timeout" in attempts(done, "late")[0].error


async def test_cancel_during_a_parallel_step_cancels_every_branch(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    rest: httpx.AsyncClient,
) -> None:
    workflows, agents = stubs
    slow = await scripted_agent(agents, script=[{"text": words(300)}], delay_ms=30)
    workflow = await create_workflow(
        workflows,
        [
            {"name": "fan", "parallel": {"branches": ["left", "right"]}, "next": "after"},
            {"name": "left", "agent": {"agent_id": slow.id, "input": "left"}},
            {"name": "right", "agent": {"agent_id": slow.id, "input": "right"}},
            calc("after", "1+1"),
        ],
    )
    execution = await execute(workflows, workflow.id)
    async with asyncio.timeout(20):
        while True:
            current = await workflows.GetExecution(
                wp.GetExecutionRequest(workflow_id=workflow.id, execution_id=execution.id)
            )
            runs = [s.run_id for s in current.steps if s.step_name in ("left", "right")]
            if len(runs) == 2 and all(runs):
                break
            await asyncio.sleep(0.05)
    base = f"/v1/workflows/{workflow.id}/executions/{execution.id}"
    cancelled = (await rest.post(f"{base}/cancel", json={})).json()
    assert cancelled["state"] == "EXECUTION_STATE_CANCELLED"
    branch_steps = [s for s in cancelled["steps"] if s["step_name"] in ("fan", "left", "right")]
    assert {s["state"] for s in branch_steps} == {"STEP_EXECUTION_STATE_CANCELLED"}
    assert not any(s["step_name"] == "after" for s in cancelled["steps"])
    async with asyncio.timeout(15):
        for run_id in runs:
            while True:
                run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
                if run.status == run_pb2.RUN_STATUS_CANCELLED:
                    break
                assert run.status in (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING)
                await asyncio.sleep(0.05)
    # Nothing moves afterwards; cancelling again changes nothing.
    await asyncio.sleep(0.5)
    again = (await rest.post(f"{base}/cancel", json={})).json()
    assert again["state"] == "EXECUTION_STATE_CANCELLED"
    assert again["steps"] == cancelled["steps"] or len(again["steps"]) == len(cancelled["steps"])
    events = [e async for e in sse(rest, f"{base}/watch")]
    assert events[-1].state_changed.state == wp.EXECUTION_STATE_CANCELLED


async def test_bad_control_calls_get_the_right_errors(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    rest: httpx.AsyncClient,
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows, [{"name": "ask", "approval": {"prompt": "?"}, "next": "end"}, calc("end", "1")]
    )
    execution = await execute(workflows, workflow.id)
    ids: dict[str, Any] = {"workflow_id": workflow.id, "execution_id": execution.id}
    waiting = await wait_state(workflows, workflow.id, execution.id, {WAITING_APPROVAL})
    assert waiting.steps[-1].state == wp.STEP_EXECUTION_STATE_WAITING
    err = await expect_error(
        workflows.ResumeExecution(wp.ResumeExecutionRequest(**ids)), Code.FAILED_PRECONDITION
    )
    assert "WAITING_APPROVAL" in (err.details() or "") and "SUSPENDED" in (err.details() or "")
    await expect_error(
        workflows.ApproveExecution(wp.ApproveExecutionRequest(**ids, step_name="end")),
        Code.INVALID_ARGUMENT,
    )
    done = await workflows.ApproveExecution(wp.ApproveExecutionRequest(**ids))
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == COMPLETED
    for call in (
        workflows.ApproveExecution(wp.ApproveExecutionRequest(**ids)),
        workflows.RejectExecution(wp.RejectExecutionRequest(**ids, reason="late")),
        workflows.SuspendExecution(wp.SuspendExecutionRequest(**ids)),
        workflows.ResumeExecution(wp.ResumeExecutionRequest(**ids)),
    ):
        err = await expect_error(call, Code.FAILED_PRECONDITION)
        assert "COMPLETED" in (err.details() or "")
    approve = await rest.post(
        f"/v1/workflows/{workflow.id}/executions/{execution.id}/approve", json={}
    )
    assert approve.status_code == 400
    assert "not waiting for approval" in approve.json()["message"]
    cancelled = await workflows.CancelExecution(wp.CancelExecutionRequest(**ids))
    assert cancelled.state == COMPLETED  # a finished execution stays as it is

    missing: dict[str, Any] = {"workflow_id": workflow.id, "execution_id": "exe_missing"}
    await expect_error(workflows.GetExecution(wp.GetExecutionRequest(**missing)), Code.NOT_FOUND)
    await expect_error(
        workflows.CancelExecution(wp.CancelExecutionRequest(**missing)), Code.NOT_FOUND
    )
    await expect_error(
        workflows.GetExecution(
            wp.GetExecutionRequest(workflow_id="other-workflow", execution_id=execution.id)
        ),
        Code.NOT_FOUND,
    )
    await expect_error(
        workflows.GetExecution(
            wp.GetExecutionRequest(workflow_id=workflow.id, execution_id="Bad Id")
        ),
        Code.INVALID_ARGUMENT,
    )
    await expect_error(execute(workflows, "no-such-workflow"), Code.NOT_FOUND)
    await expect_error(
        workflows.ListExecutions(wp.ListExecutionsRequest(workflow_id="no-such-workflow")),
        Code.NOT_FOUND,
    )
    await expect_error(
        workflows.ListExecutions(wp.ListExecutionsRequest(workflow_id=workflow.id, filter="x=1")),
        Code.INVALID_ARGUMENT,
    )
    await expect_error(execute(workflows, workflow.id, key="\x01"), Code.INVALID_ARGUMENT)

    async def watch_negative() -> None:
        async for _ in workflows.WatchExecution(wp.WatchExecutionRequest(**ids, after_seq=-1)):
            pass

    await expect_error(watch_negative(), Code.INVALID_ARGUMENT)
    malformed = await rest.post(
        f"/v1/workflows/{workflow.id}/execute",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 400
    wrong_type = await rest.post(f"/v1/workflows/{workflow.id}/execute", json={"input": 5})
    assert wrong_type.status_code == 400
    listed = await workflows.ListExecutions(
        wp.ListExecutionsRequest(workflow_id=workflow.id, filter="state=COMPLETED")
    )
    assert [e.id for e in listed.executions] == [execution.id]
    listed = await workflows.ListExecutions(
        wp.ListExecutionsRequest(workflow_id=workflow.id, filter="state=RUNNING")
    )
    assert list(listed.executions) == []


async def test_reject_fails_the_execution_and_versions_are_pinned(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows,
        [
            {"name": "around", "loop": {"body": "ask", "max_iterations": 2}, "next": "end"},
            {"name": "ask", "approval": {"prompt": "?"}},
            calc("end", "1"),
        ],
    )
    execution = await execute(workflows, workflow.id)
    await wait_state(workflows, workflow.id, execution.id, {WAITING_APPROVAL})
    # A new version does not change the running execution.
    updated = workflow.__class__()
    updated.CopyFrom(workflow)
    del updated.steps[:]
    updated.steps.add().CopyFrom(workflow.steps[2])
    await workflows.UpdateWorkflow(wp.UpdateWorkflowRequest(workflow=updated))
    ids: dict[str, Any] = {"workflow_id": workflow.id, "execution_id": execution.id}
    rejected = await workflows.RejectExecution(wp.RejectExecutionRequest(**ids, reason="no way"))
    assert rejected.state == wp.EXECUTION_STATE_FAILED
    assert rejected.workflow_version == 1
    assert "no way" in rejected.error and "ask" in rejected.error
    assert [(s.key, s.state) for s in rejected.steps] == [
        ("around", wp.STEP_EXECUTION_STATE_CANCELLED),
        ("around[1]/ask", wp.STEP_EXECUTION_STATE_FAILED),
    ]
    second = await execute(workflows, workflow.id)
    assert second.workflow_version == 2
    done = await wait_state(workflows, workflow.id, second.id, TERMINAL)
    assert done.state == COMPLETED and [s.key for s in done.steps] == ["end"]


ALL_SCOPES = "workflows.read workflows.write agents.read agents.write tools.read tools.write"


async def test_tenants_never_see_each_others_executions(tmp_path: Path) -> None:
    signer = Signer()
    env = auth_env(signer.write_jwks(tmp_path / "jwks.json"))
    ports = Ports()
    server = start_server(ports, tmp_path, **env)
    try:
        a = (("authorization", f"Bearer {signer.token('tenant-a', ALL_SCOPES)}"),)
        b = (("authorization", f"Bearer {signer.token('tenant-b', ALL_SCOPES)}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await create_workflow(
                workflows, [{"name": "ask", "approval": {"prompt": "?"}}], metadata=a
            )
            execution = await execute(workflows, workflow.id, key="k", metadata=a)
            ids: dict[str, Any] = {"workflow_id": workflow.id, "execution_id": execution.id}
            for call in (
                workflows.GetExecution(wp.GetExecutionRequest(**ids), metadata=b),
                workflows.ApproveExecution(wp.ApproveExecutionRequest(**ids), metadata=b),
                workflows.RejectExecution(wp.RejectExecutionRequest(**ids), metadata=b),
                workflows.SuspendExecution(wp.SuspendExecutionRequest(**ids), metadata=b),
                workflows.ResumeExecution(wp.ResumeExecutionRequest(**ids), metadata=b),
                workflows.CancelExecution(wp.CancelExecutionRequest(**ids), metadata=b),
                workflows.ListExecutions(
                    wp.ListExecutionsRequest(workflow_id=workflow.id), metadata=b
                ),
                execute(workflows, workflow.id, key="k", metadata=b),
            ):
                await expect_error(call, Code.NOT_FOUND)

            async def watch() -> None:
                async for _ in workflows.WatchExecution(
                    wp.WatchExecutionRequest(**ids), metadata=b
                ):
                    pass

            await expect_error(watch(), Code.NOT_FOUND)
            mine = await workflows.GetExecution(wp.GetExecutionRequest(**ids), metadata=a)
            assert mine.state in (
                wp.EXECUTION_STATE_PENDING,
                wp.EXECUTION_STATE_RUNNING,
                WAITING_APPROVAL,
            )
            await expect_error(
                workflows.GetExecution(wp.GetExecutionRequest(**ids)), Code.UNAUTHENTICATED
            )
    finally:
        assert server.stop() == 0, server.log_tail()


async def test_join_any_loop_until_and_condition_else(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
) -> None:
    workflows, agents = stubs
    slow = await scripted_agent(agents, script=[{"text": words(300)}], delay_ms=30)
    workflow = await create_workflow(
        workflows,
        [
            {
                "name": "race",
                "parallel": {"branches": ["quick", "sluggish"], "join": "PARALLEL_JOIN_ANY"},
                "next": "again",
            },
            calc("quick", "40 + 2"),
            {"name": "sluggish", "agent": {"agent_id": slow.id, "input": "take your time"}},
            {
                "name": "again",
                "loop": {"body": "tick", "until": "steps.tick.output >= 3", "max_iterations": 10},
                "next": "pick",
            },
            calc("tick", "{{ input.start }} + 0"),
            {
                "name": "pick",
                "condition": {
                    "expression": "steps.race.output.quick == 0",
                    "then_step": "never",
                    "else_step": "otherwise",
                },
            },
            calc("never", "0"),
            calc("otherwise", "{{ steps.again.output.iterations }} * 100"),
        ],
    )
    execution = await execute(workflows, workflow.id, {"start": 3})
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == COMPLETED, done.error
    # The last main-chain step is the condition: its output wraps the arm's.
    assert done.output.struct_value["output"] == 100
    race = attempts(done, "race")[0]
    assert race.output.struct_value["quick"] == 42
    assert "sluggish" not in race.output.struct_value
    # The losing branch was stopped (if it had started at all).
    losing = attempts(done, "sluggish")
    assert all(a.state == wp.STEP_EXECUTION_STATE_CANCELLED for a in losing)
    assert [s.key for s in done.steps if s.step_name == "tick"] == ["again[1]/tick"]
    again = attempts(done, "again")[0].output.struct_value
    assert again["until_met"] is True and again["iterations"] == 1
    assert attempts(done, "never") == []
    pick = attempts(done, "pick")[0].output.struct_value
    assert pick["result"] is False and pick["branch"] == "otherwise"
