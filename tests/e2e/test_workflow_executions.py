"""Workflow executions end to end: the real server (SQLite, and PostgreSQL
where marked) behind the real Envoy; REST and SSE through the edge, gRPC
through generated stubs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
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
    workflow_message,
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
    assert again["steps"] == cancelled["steps"]
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
    # A suspended execution waits for no approval until it is resumed.
    suspended = await workflows.SuspendExecution(wp.SuspendExecutionRequest(**ids))
    assert suspended.state == wp.EXECUTION_STATE_SUSPENDED
    for call in (
        workflows.ApproveExecution(wp.ApproveExecutionRequest(**ids)),
        workflows.RejectExecution(wp.RejectExecutionRequest(**ids)),
        workflows.SuspendExecution(wp.SuspendExecutionRequest(**ids)),
    ):
        err = await expect_error(call, Code.FAILED_PRECONDITION)
        assert "it is SUSPENDED" in (err.details() or ""), err.details()
    resumed = await workflows.ResumeExecution(wp.ResumeExecutionRequest(**ids))
    assert resumed.state == WAITING_APPROVAL
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

    async def watch_missing() -> None:
        async for _ in workflows.WatchExecution(wp.WatchExecutionRequest(**missing)):
            pass

    for call in (
        workflows.GetExecution(wp.GetExecutionRequest(**missing)),
        workflows.ApproveExecution(wp.ApproveExecutionRequest(**missing)),
        workflows.RejectExecution(wp.RejectExecutionRequest(**missing)),
        workflows.SuspendExecution(wp.SuspendExecutionRequest(**missing)),
        workflows.ResumeExecution(wp.ResumeExecutionRequest(**missing)),
        workflows.CancelExecution(wp.CancelExecutionRequest(**missing)),
        watch_missing(),
    ):
        err = await expect_error(call, Code.NOT_FOUND)
        assert "exe_missing" in (err.details() or ""), err.details()
    missing_over_rest = await rest.post(
        f"/v1/workflows/{workflow.id}/executions/exe_missing/reject", json={}
    )
    assert missing_over_rest.status_code == 404, missing_over_rest.text
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


async def test_join_any_won_while_another_branch_waits_for_approval(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows,
        [
            {
                "name": "race",
                "parallel": {"branches": ["ask", "nap"], "join": "PARALLEL_JOIN_ANY"},
            },
            {"name": "ask", "approval": {"prompt": "?"}},
            # The approval parks at once; the other branch wins a moment later.
            {"name": "nap", "wait": "1s", "next": "quick"},
            calc("quick", "40 + 2"),
        ],
    )
    execution = await execute(workflows, workflow.id, {})
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == COMPLETED, done.error
    assert attempts(done, "race")[0].output.struct_value["nap"] == 42  # the chain's last output
    # The approval the winner made moot is closed, not left waiting.
    assert [a.state for a in attempts(done, "ask")] == [wp.STEP_EXECUTION_STATE_CANCELLED]


async def test_an_execution_runs_its_pinned_version_to_the_end(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows,
        [
            {"name": "ask", "approval": {"prompt": "v1?"}, "next": "v1_step"},
            calc("v1_step", "{{ steps.ask.output.n }} + 1"),
        ],
    )
    old = await execute(workflows, workflow.id)
    await wait_state(workflows, workflow.id, old.id, {WAITING_APPROVAL})
    # Version 2 changes the steps after the approval the old execution waits on.
    updated = await workflows.UpdateWorkflow(
        wp.UpdateWorkflowRequest(
            workflow=workflow_message(
                [
                    {"name": "ask", "approval": {"prompt": "v2?"}, "next": "v2_step"},
                    calc("v2_step", "{{ steps.ask.output.n }} * 100", next="v2_more"),
                    calc("v2_more", "{{ steps.v2_step.output }} + 5"),
                ],
                id=workflow.id,
            )
        )
    )
    assert updated.version == 2
    new = await execute(workflows, workflow.id)
    assert (old.workflow_version, new.workflow_version) == (1, 2)
    await wait_state(workflows, workflow.id, new.id, {WAITING_APPROVAL})
    for execution in (old, new):
        request = wp.ApproveExecutionRequest(workflow_id=workflow.id, execution_id=execution.id)
        request.input.update({"n": 7})
        await workflows.ApproveExecution(request)

    done_old = await wait_state(workflows, workflow.id, old.id, TERMINAL)
    assert done_old.state == COMPLETED, done_old.error
    assert done_old.workflow_version == 1
    assert [s.key for s in done_old.steps] == ["ask", "v1_step"]
    assert attempts(done_old, "ask")[0].input.struct_value["prompt"] == "v1?"
    assert done_old.output.number_value == 8
    done_new = await wait_state(workflows, workflow.id, new.id, TERMINAL)
    assert done_new.state == COMPLETED, done_new.error
    assert done_new.workflow_version == 2
    assert [s.key for s in done_new.steps] == ["ask", "v2_step", "v2_more"]
    assert attempts(done_new, "ask")[0].input.struct_value["prompt"] == "v2?"
    assert done_new.output.number_value == 705


async def test_reject_over_rest_fails_the_execution(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    rest: httpx.AsyncClient,
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows,
        [
            calc("before", "2 + 2", next="ask"),
            {"name": "ask", "approval": {"prompt": "Go on?"}, "next": "after"},
            calc("after", "1"),
        ],
    )
    execution = await execute(workflows, workflow.id)
    await wait_state(workflows, workflow.id, execution.id, {WAITING_APPROVAL})
    base = f"/v1/workflows/{workflow.id}/executions/{execution.id}"
    response = await rest.post(f"{base}/reject", json={"reason": "numbers look off"})
    assert response.status_code == 200, response.text
    rejected = response.json()
    assert rejected["id"] == execution.id and rejected["workflow_id"] == workflow.id
    assert rejected["state"] == "EXECUTION_STATE_FAILED"
    assert rejected["error"] == "step 'ask' was rejected: numbers look off"
    assert rejected["end_time"]
    steps = [(s["key"], s["state"], s.get("error", "")) for s in rejected["steps"]]
    assert steps == [
        ("before", "STEP_EXECUTION_STATE_COMPLETED", ""),
        ("ask", "STEP_EXECUTION_STATE_FAILED", "rejected: numbers look off"),
    ]
    assert (await rest.get(base)).json() == rejected
    events = [e async for e in sse(rest, f"{base}/watch")]
    assert events[-1].state_changed.state == wp.EXECUTION_STATE_FAILED
    assert events[-1].state_changed.error == rejected["error"]
    failed = [e.step_failed for e in events if e.WhichOneof("event") == "step_failed"]
    assert [(f.step_name, f.error) for f in failed] == [("ask", "rejected: numbers look off")]
    # Decided once: a second reject or an approve is refused.
    for verb in ("reject", "approve"):
        again = await rest.post(f"{base}/{verb}", json={})
        assert again.status_code == 400, again.text
        assert again.json()["code"] == 9 and "it is FAILED" in again.json()["message"]


async def test_an_agent_step_reads_an_earlier_steps_output(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
) -> None:
    workflows, agents = stubs
    echo = await scripted_agent(agents)  # no script: it answers "Echo: <the message>"
    workflow = await create_workflow(
        workflows,
        [
            calc("add", "20 + 22", next="tell"),
            {
                "name": "tell",
                "agent": {
                    "agent_id": echo.id,
                    "input": "The answer is {{ steps.add.output }} for {{ input.who }}",
                },
            },
        ],
    )
    execution = await execute(workflows, workflow.id, {"who": "Ada"})
    done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
    assert done.state == COMPLETED, done.error
    tell = attempts(done, "tell")[0]
    assert tell.input.string_value == "The answer is 42 for Ada"
    # The provider got the rendered message: it echoes it back.
    assert tell.output.string_value == "Echo: The answer is 42 for Ada"
    assert done.output.string_value == "Echo: The answer is 42 for Ada"
    run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=tell.run_id))
    assert run.status == run_pb2.RUN_STATUS_COMPLETED


STEP_TIMED_OUT = "step {!r} timed out: the steps inside it took longer than {} s (its timeout)"


async def test_a_composite_timeout_cancels_the_steps_inside_and_fails_the_step(
    any_stack: Stack,
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    endpoint: Endpoint,  # noqa: F811
) -> None:
    workflows, agents = stubs
    slow_agent = await scripted_agent(agents, script=[{"text": words(300)}], delay_ms=30)
    slow_tool = await echo_tool(any_stack.grpc_target, endpoint.url("/slow"))
    fan = await create_workflow(
        workflows,
        [
            {
                "name": "fan",
                "parallel": {"branches": ["left", "right"]},
                "timeout": "1.5s",
                "next": "after",
            },
            {"name": "left", "agent": {"agent_id": slow_agent.id, "input": "left"}},
            calc("right", "1 + 1", next="nap"),
            {"name": "nap", "wait": "60s"},
            calc("after", "0"),
        ],
    )
    around = await create_workflow(
        workflows,
        [
            {"name": "around", "loop": {"body": "tick"}, "timeout": "1.7s"},
            {"name": "tick", "wait": "0.5s"},
        ],
    )
    check = await create_workflow(
        workflows,
        [
            {
                "name": "check",
                "condition": {
                    "expression": "input.slow",
                    "then_step": "call",
                    "else_step": "quick",
                },
                # Under the slow tool's 3 s, and room for the quick arm on a
                # busy machine.
                "timeout": "2s",
            },
            {"name": "call", "tool": {"tool_id": slow_tool}},
            calc("quick", "6 * 7"),
        ],
    )
    started = [
        (fan.id, await execute(workflows, fan.id)),
        (around.id, await execute(workflows, around.id)),
        (check.id, await execute(workflows, check.id, {"slow": True})),
        (check.id, await execute(workflows, check.id, {"slow": False})),
    ]
    fan_done, around_done, check_done, quick_done = [
        await wait_state(workflows, workflow_id, execution.id, TERMINAL)
        for workflow_id, execution in started
    ]

    # Parallel: the agent branch and the waiting step are cancelled, the
    # completed step stays, the step after the parallel one never starts.
    assert fan_done.state == wp.EXECUTION_STATE_FAILED
    assert fan_done.error == STEP_TIMED_OUT.format("fan", "1.5")
    fan_attempt = attempts(fan_done, "fan")[0]
    assert fan_attempt.state == wp.STEP_EXECUTION_STATE_FAILED
    assert fan_attempt.error == fan_done.error
    elapsed = fan_attempt.end_time.ToDatetime() - fan_attempt.start_time.ToDatetime()
    assert 1.5 <= elapsed.total_seconds() < 5
    states = {s.key: (s.state, s.error) for s in fan_done.steps}
    stopped = (wp.STEP_EXECUTION_STATE_CANCELLED, "cancelled: step 'fan' timed out")
    assert states["left"] == stopped and states["nap"] == stopped
    assert states["right"] == (wp.STEP_EXECUTION_STATE_COMPLETED, "")
    assert "after" not in states
    run_id = attempts(fan_done, "left")[0].run_id
    async with asyncio.timeout(15):
        while True:
            run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
            if run.status == run_pb2.RUN_STATUS_CANCELLED:
                break
            assert run.status in (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING)
            await asyncio.sleep(0.05)

    # Loop: the iterations done stay done; the one running is cancelled.
    assert around_done.state == wp.EXECUTION_STATE_FAILED
    assert around_done.error == STEP_TIMED_OUT.format("around", "1.7")
    ticks = [s for s in around_done.steps if s.step_name == "tick"]
    assert [s.key for s in ticks] == [f"around[{i}]/tick" for i in range(1, len(ticks) + 1)]
    assert len(ticks) >= 2
    assert all(s.state == wp.STEP_EXECUTION_STATE_COMPLETED for s in ticks[:-1])
    assert (ticks[-1].state, ticks[-1].error) == (
        wp.STEP_EXECUTION_STATE_CANCELLED,
        "cancelled: step 'around' timed out",
    )

    # Condition: the slow arm is cut short; the quick arm finishes in time.
    assert check_done.state == wp.EXECUTION_STATE_FAILED
    assert check_done.error == STEP_TIMED_OUT.format("check", "2")
    assert attempts(check_done, "call")[0].state == wp.STEP_EXECUTION_STATE_CANCELLED
    assert quick_done.state == COMPLETED, quick_done.error
    assert quick_done.output.struct_value["output"] == 42


async def test_a_composite_deadline_counts_from_its_first_start_across_a_restart(
    tmp_path: Path,
) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await create_workflow(
                workflows,
                [
                    {
                        "name": "around",
                        "loop": {"body": "nap", "max_iterations": 1},
                        "timeout": "4s",
                    },
                    {"name": "nap", "wait": "60s"},
                ],
            )
            execution = await execute(workflows, workflow.id)
            waiting = await wait_step(
                workflows, workflow.id, execution.id, "nap", wp.STEP_EXECUTION_STATE_WAITING
            )
        assert server.stop() == 0, server.log_tail()
        # Down past the deadline: a deadline counted from the restart would
        # give the loop 4 s more.
        first_start = attempts(waiting, "around")[0].start_time.ToDatetime(tzinfo=UTC)
        await asyncio.sleep(max(0.0, (first_start - datetime.now(UTC)).total_seconds() + 4.5))
        server = start_server(ports, tmp_path)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
        assert done.state == wp.EXECUTION_STATE_FAILED
        assert done.error == STEP_TIMED_OUT.format("around", "4")
        loop = attempts(done, "around")
        assert [(a.attempt, a.state) for a in loop] == [
            (1, wp.STEP_EXECUTION_STATE_CANCELLED),
            (2, wp.STEP_EXECUTION_STATE_FAILED),
        ]
        assert "shut down" in loop[0].error
        # The second attempt failed at once: its deadline was the first one's.
        second = loop[1].end_time.ToDatetime() - loop[1].start_time.ToDatetime()
        assert second < timedelta(seconds=1), second
        nap = attempts(done, "around[1]/nap")
        assert [(a.state, a.error) for a in nap] == [
            (wp.STEP_EXECUTION_STATE_CANCELLED, "cancelled: step 'around' timed out")
        ]
    finally:
        assert server.stop() == 0, server.log_tail()


APPROVAL_TIMED_OUT = "approval not given within 2 s (its timeout)"


async def test_an_approval_not_given_in_time_fails_the_execution(
    stubs: tuple[workflow_pb2_grpc.WorkflowServiceAsyncStub, agent_pb2_grpc.AgentServiceAsyncStub],
    rest: httpx.AsyncClient,
) -> None:
    workflows, _ = stubs
    workflow = await create_workflow(
        workflows,
        [
            {"name": "ask", "approval": {"prompt": "Quick?"}, "timeout": "2s", "next": "end"},
            calc("end", "1 + 1"),
        ],
    )
    inside = await create_workflow(
        workflows,
        [
            {"name": "around", "loop": {"body": "ask", "max_iterations": 1}, "timeout": "1.5s"},
            {"name": "ask", "approval": {"prompt": "Inside?"}},
        ],
    )
    late = await execute(workflows, workflow.id)
    in_time = await execute(workflows, workflow.id)
    boxed = await execute(workflows, inside.id)
    waiting = await wait_state(workflows, workflow.id, late.id, {WAITING_APPROVAL})
    ask = attempts(waiting, "ask")[0]
    deadline = ask.wake_time.ToDatetime() - ask.start_time.ToDatetime()
    assert deadline == timedelta(seconds=2)
    # Approved before its deadline: the execution goes on.
    await wait_state(workflows, workflow.id, in_time.id, {WAITING_APPROVAL})
    await workflows.ApproveExecution(
        wp.ApproveExecutionRequest(workflow_id=workflow.id, execution_id=in_time.id)
    )
    done = await wait_state(workflows, workflow.id, in_time.id, TERMINAL)
    assert done.state == COMPLETED, done.error

    # Not approved: the worker wakes the execution at the deadline and it fails.
    failed = await wait_state(workflows, workflow.id, late.id, TERMINAL, limit_s=15)
    assert failed.state == wp.EXECUTION_STATE_FAILED
    assert failed.error == f"step 'ask' failed: {APPROVAL_TIMED_OUT}"
    assert [(s.key, s.state, s.error) for s in failed.steps] == [
        ("ask", wp.STEP_EXECUTION_STATE_FAILED, APPROVAL_TIMED_OUT)
    ]
    ended = failed.steps[0].end_time.ToDatetime()
    assert ended >= failed.steps[0].wake_time.ToDatetime()
    ids: dict[str, Any] = {"workflow_id": workflow.id, "execution_id": late.id}
    err = await expect_error(
        workflows.ApproveExecution(wp.ApproveExecutionRequest(**ids)), Code.FAILED_PRECONDITION
    )
    assert "it is FAILED" in (err.details() or "")
    base = f"/v1/workflows/{workflow.id}/executions/{late.id}"
    approve = await rest.post(f"{base}/approve", json={})
    assert approve.status_code == 400 and approve.json()["code"] == 9, approve.text
    events = [e async for e in sse(rest, f"{base}/watch")]
    states = [e.state_changed.state for e in events if e.WhichOneof("event") == "state_changed"]
    assert states == [
        wp.EXECUTION_STATE_PENDING,
        wp.EXECUTION_STATE_RUNNING,
        WAITING_APPROVAL,
        wp.EXECUTION_STATE_PENDING,  # woken at the deadline
        wp.EXECUTION_STATE_RUNNING,
        wp.EXECUTION_STATE_FAILED,
    ]
    assert events[-1].state_changed.error == failed.error

    # An approval inside a composite step waits until that step's deadline
    # at the latest; then the composite step fails.
    boxed_done = await wait_state(workflows, inside.id, boxed.id, TERMINAL, limit_s=15)
    assert boxed_done.state == wp.EXECUTION_STATE_FAILED
    assert boxed_done.error == STEP_TIMED_OUT.format("around", "1.5")
    loop = attempts(boxed_done, "around")[0]
    inner = attempts(boxed_done, "around[1]/ask")[0]
    assert inner.wake_time.ToDatetime() - loop.start_time.ToDatetime() == timedelta(seconds=1.5)
    assert (inner.state, inner.error) == (
        wp.STEP_EXECUTION_STATE_CANCELLED,
        "cancelled: step 'around' timed out",
    )
