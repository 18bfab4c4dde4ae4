"""Executions survive their server: SIGKILL while a step runs, then a
restart (or another replica) finishes the execution from its last recorded
step; an approval wait survives a restart. PostgreSQL (required under
CI=true)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2, workflow_pb2_grpc
from aster.v1 import workflow_pb2 as wp
from tests.chat_helpers import scripted_agent, words
from tests.e2e.test_workflow_executions import calc, echo_tool
from tests.processes import Ports, Process, start_edge, start_server
from tests.unit.storage.conftest import _reset_postgres
from tests.unit.tools.conftest import SLOW_S, Endpoint, endpoint, endpoint_server  # noqa: F401
from tests.workflow_helpers import (
    COMPLETED,
    TERMINAL,
    attempts,
    create_workflow,
    execute,
    wait_state,
    wait_step,
)

pytestmark = pytest.mark.postgres
LEASE = {"ASTER_RUN_LEASE_S": "2"}


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    await _reset_postgres(postgres_url)
    yield postgres_url
    await _reset_postgres(postgres_url)


def kill(server: Process) -> None:
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)
    server.stop()


def driving(server: Process, execution_id: str) -> bool:
    """Whether the server's log says it drove the execution."""
    return any(
        "driving execution" in line and execution_id in line
        for line in server.log_path.read_text(errors="replace").splitlines()
    )


def crash_steps(step_one: str, step_two: str, slow: str) -> list[dict[str, Any]]:
    return [
        {"name": "one", "tool": {"tool_id": step_one, "arguments": {"n": 1}}, "next": "two"},
        {"name": "two", "tool": {"tool_id": step_two, "arguments": {"n": 2}}, "next": "three"},
        {"name": "three", "tool": {"tool_id": slow}, "next": "four"},
        calc("four", "{{ steps.one.output.json.n }} + {{ steps.two.output.json.n }}"),
    ]


def calls(endpoint: Endpoint, path: str, marker: str = "") -> list[Any]:  # noqa: F811
    return [
        r
        for r in endpoint.received
        if r.path == path and (not marker or r.query.get("step") == [marker])
    ]


async def check_crash_recovery(
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub,
    workflow_id: str,
    execution_id: str,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    done = await wait_state(workflows, workflow_id, execution_id, TERMINAL, limit_s=60)
    assert done.state == COMPLETED, done.error
    assert done.output.number_value == 3
    # Steps 1-2 ran exactly once: neither their tools nor their records repeat.
    assert len(calls(endpoint, "/echo", "one")) == 1
    assert len(calls(endpoint, "/echo", "two")) == 1
    assert [a.attempt for a in attempts(done, "one")] == [1]
    assert [a.attempt for a in attempts(done, "two")] == [1]
    # Step 3 was interrupted, then ran again as attempt 2, with its own key.
    third = attempts(done, "three")
    assert [(a.attempt, a.state) for a in third] == [
        (1, wp.STEP_EXECUTION_STATE_CANCELLED),
        (2, wp.STEP_EXECUTION_STATE_COMPLETED),
    ]
    assert "interrupted" in third[0].error
    keys = [r.headers["idempotency-key"] for r in calls(endpoint, "/slow")]
    assert keys == [f"{execution_id}:three:1", f"{execution_id}:three:2"]
    assert [a.attempt for a in attempts(done, "four")] == [1]


async def test_sigkill_during_step_three_then_restart_completes_the_execution(
    tmp_path: Path,
    database: str,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    ports = Ports()
    env = {"ASTER_DATABASE_URL": database, **LEASE}
    server = start_server(ports, tmp_path, **env)
    target = f"127.0.0.1:{ports.grpc}"
    one = await echo_tool(target, endpoint.url("/echo?step=one"))
    two = await echo_tool(target, endpoint.url("/echo?step=two"))
    slow = await echo_tool(target, endpoint.url("/slow"))
    async with grpc.aio.insecure_channel(target) as channel:
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        workflow = await create_workflow(workflows, crash_steps(one, two, slow))
        execution = await execute(workflows, workflow.id)
        await wait_step(workflows, workflow.id, execution.id, "three")
    kill(server)
    restarted = start_server(ports, tmp_path, **env)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            await check_crash_recovery(workflows, workflow.id, execution.id, endpoint)
            events = [
                e
                async for e in workflows.WatchExecution(
                    wp.WatchExecutionRequest(workflow_id=workflow.id, execution_id=execution.id)
                )
            ]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            started = [e.step_started for e in events if e.WhichOneof("event") == "step_started"]
            assert [(s.step_name, s.attempt) for s in started] == [
                ("one", 1),
                ("two", 1),
                ("three", 1),
                ("three", 2),
                ("four", 1),
            ]
    finally:
        assert restarted.stop() == 0, restarted.log_tail()


async def test_another_replica_takes_over_when_the_first_is_killed(
    tmp_path: Path,
    database: str,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    env = {"ASTER_DATABASE_URL": database, **LEASE}
    first_ports, second_ports = Ports(), Ports()
    first = start_server(first_ports, tmp_path / "a", **env)
    second = start_server(second_ports, tmp_path / "b", **env)
    try:
        target = f"127.0.0.1:{first_ports.grpc}"
        one = await echo_tool(target, endpoint.url("/echo?step=one"))
        two = await echo_tool(target, endpoint.url("/echo?step=two"))
        slow = await echo_tool(target, endpoint.url("/slow"))
        async with grpc.aio.insecure_channel(target) as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await create_workflow(workflows, crash_steps(one, two, slow))
            execution = await execute(workflows, workflow.id)
            await wait_step(workflows, workflow.id, execution.id, "three")
        # Kill the replica driving the execution; the other one finishes it.
        drivers = [s for s in (first, second) if driving(s, execution.id)]
        assert len(drivers) == 1
        victim = drivers[0]
        survivor, survivor_ports = (
            (second, second_ports) if victim is first else (first, first_ports)
        )
        kill(victim)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{survivor_ports.grpc}") as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            await check_crash_recovery(workflows, workflow.id, execution.id, endpoint)
        assert driving(survivor, execution.id)
    finally:
        for server in (first, second):
            server.stop()


async def test_an_approval_wait_survives_a_restart_and_resumes_over_rest(
    tmp_path: Path,
    database: str,
) -> None:
    ports = Ports()
    env = {"ASTER_DATABASE_URL": database, **LEASE}
    server = start_server(ports, tmp_path, **env)
    edge = start_edge(ports, tmp_path)
    try:
        target = f"127.0.0.1:{ports.grpc}"
        async with grpc.aio.insecure_channel(target) as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            workflow = await create_workflow(
                workflows,
                [
                    calc("before", "20 + 1", next="ask"),
                    {"name": "ask", "approval": {"prompt": "Double it?"}, "next": "after"},
                    calc("after", "{{ steps.before.output }} * {{ steps.ask.output.factor }}"),
                ],
            )
            execution = await execute(workflows, workflow.id)
            await wait_state(
                workflows, workflow.id, execution.id, {wp.EXECUTION_STATE_WAITING_APPROVAL}
            )
        kill(server)
        server = start_server(ports, tmp_path, **env)
        async with grpc.aio.insecure_channel(target) as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            await asyncio.sleep(3)  # longer than a lease: nothing rescues a wait
            still = await workflows.GetExecution(
                wp.GetExecutionRequest(workflow_id=workflow.id, execution_id=execution.id)
            )
            assert still.state == wp.EXECUTION_STATE_WAITING_APPROVAL
            assert [(s.key, s.state) for s in still.steps] == [
                ("before", wp.STEP_EXECUTION_STATE_COMPLETED),
                ("ask", wp.STEP_EXECUTION_STATE_WAITING),
            ]
            base = f"http://127.0.0.1:{ports.http}"
            path = f"/v1/workflows/{workflow.id}/executions/{execution.id}/approve"
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                approved = await http.post(path, json={"input": {"factor": 2}})
            assert approved.status_code == 200, approved.text
            done = await wait_state(workflows, workflow.id, execution.id, TERMINAL)
            assert done.state == COMPLETED, done.error
            assert done.output.number_value == 42
            assert [a.attempt for a in attempts(done, "before")] == [1]
            assert [a.attempt for a in attempts(done, "ask")] == [1]
    finally:
        edge.stop()
        assert server.stop() == 0, server.log_tail()


async def test_a_wait_keeps_its_wake_up_time_across_a_crash(tmp_path: Path, database: str) -> None:
    ports = Ports()
    env = {"ASTER_DATABASE_URL": database, **LEASE}
    server = start_server(ports, tmp_path, **env)
    target = f"127.0.0.1:{ports.grpc}"
    async with grpc.aio.insecure_channel(target) as channel:
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        workflow = await create_workflow(
            workflows, [{"name": "nap", "wait": "6s", "next": "end"}, calc("end", "1 + 1")]
        )
        execution = await execute(workflows, workflow.id)
        waiting = await wait_step(
            workflows, workflow.id, execution.id, "nap", wp.STEP_EXECUTION_STATE_WAITING
        )
    wake = waiting.steps[0].wake_time.ToDatetime()
    kill(server)
    restarted = start_server(ports, tmp_path, **env)
    back = datetime.now(UTC).replace(tzinfo=None)  # ToDatetime() is naive UTC
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
            done = await wait_state(workflows, workflow.id, execution.id, TERMINAL, limit_s=30)
        assert done.state == COMPLETED, done.error
        nap = attempts(done, "nap")
        # The same attempt, with the same wake-up time: the wait was not restarted.
        assert [(a.attempt, a.state) for a in nap] == [(1, wp.STEP_EXECUTION_STATE_COMPLETED)]
        assert nap[0].wake_time.ToDatetime() == wake
        assert nap[0].end_time.ToDatetime() >= wake
        # A wait started again after the restart would end 6 s after it.
        assert (nap[0].end_time.ToDatetime() - back).total_seconds() < 6
    finally:
        assert restarted.stop() == 0, restarted.log_tail()


@pytest.mark.redis
async def test_suspend_and_cancel_reach_the_replica_driving_the_execution(
    tmp_path: Path, database: str, redis_url: str
) -> None:
    env = {"ASTER_DATABASE_URL": database, "ASTER_REDIS_URL": redis_url, **LEASE}
    first_ports, second_ports = Ports(), Ports()
    first = start_server(first_ports, tmp_path / "a", **env)
    # The second replica polls rarely, so the first one drives the execution
    # and every control call below crosses replicas.
    second = start_server(second_ports, tmp_path / "b", **env, ASTER_QUEUE_POLL_S="60")
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first_ports.grpc}") as one,
            grpc.aio.insecure_channel(f"127.0.0.1:{second_ports.grpc}") as other,
        ):
            agents = agent_pb2_grpc.AgentServiceStub(one)
            slow = await scripted_agent(agents, script=[{"text": words(400)}], delay_ms=30)
            driver = workflow_pb2_grpc.WorkflowServiceStub(one)
            remote = workflow_pb2_grpc.WorkflowServiceStub(other)
            workflow = await create_workflow(
                driver, [{"name": "talk", "agent": {"agent_id": slow.id, "input": "go"}}]
            )
            execution = await execute(driver, workflow.id)
            ids: dict[str, Any] = {"workflow_id": workflow.id, "execution_id": execution.id}
            first_run = await wait_run_id(driver, ids, 1)
            # Suspended through the other replica: the attempt stops where it runs.
            suspended = await remote.SuspendExecution(wp.SuspendExecutionRequest(**ids))
            assert suspended.state == wp.EXECUTION_STATE_SUSPENDED
            await wait_run(agents, first_run, run_pb2.RUN_STATUS_CANCELLED)
            resumed = await driver.ResumeExecution(wp.ResumeExecutionRequest(**ids))
            assert resumed.state in (wp.EXECUTION_STATE_PENDING, wp.EXECUTION_STATE_RUNNING)
            second_run = await wait_run_id(driver, ids, 2)
            again = await driver.GetExecution(wp.GetExecutionRequest(**ids))
            talk = attempts(again, "talk")
            assert [a.attempt for a in talk] == [1, 2]
            assert talk[0].state == wp.STEP_EXECUTION_STATE_CANCELLED
            # Cancelled through the other replica: the second run stops too.
            cancelled = await remote.CancelExecution(wp.CancelExecutionRequest(**ids))
            assert cancelled.state == wp.EXECUTION_STATE_CANCELLED
            await wait_run(agents, second_run, run_pb2.RUN_STATUS_CANCELLED)
            await asyncio.sleep(1)
            final = await driver.GetExecution(wp.GetExecutionRequest(**ids))
            assert final.state == wp.EXECUTION_STATE_CANCELLED
            assert [a.state for a in attempts(final, "talk")] == [
                wp.STEP_EXECUTION_STATE_CANCELLED,
                wp.STEP_EXECUTION_STATE_CANCELLED,
            ]
        assert driving(first, execution.id) and not driving(second, execution.id)
    finally:
        for server in (first, second):
            assert server.stop() == 0, server.log_tail()


async def wait_run(agents: agent_pb2_grpc.AgentServiceAsyncStub, run_id: str, status: int) -> None:
    run = run_pb2.Run()
    try:
        async with asyncio.timeout(15):
            while True:
                run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
                if run.status == status:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(
            f"run {run_id} is {run_pb2.RunStatus.Name(run.status)} after 15 s, "
            f"not {run_pb2.RunStatus.Name(status)}"
        )


async def wait_run_id(
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub,
    ids: dict[str, Any],
    attempt: int,
) -> str:
    """The run of the agent step's `attempt`, once it is recorded."""
    async with asyncio.timeout(15):
        while True:
            execution = await workflows.GetExecution(wp.GetExecutionRequest(**ids))
            runs = [s.run_id for s in execution.steps if s.attempt == attempt and s.run_id]
            if runs:
                return runs[0]
            await asyncio.sleep(0.05)


assert SLOW_S >= 2  # step three must still run when the test kills its server
