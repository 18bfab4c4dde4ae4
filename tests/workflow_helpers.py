"""Helpers of the workflow execution tests: workflows as JSON, waiting for
states, reading executions over gRPC, REST and SSE."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Collection
from typing import Any

import httpx
from google.protobuf import json_format

from aster.v1 import workflow_pb2, workflow_pb2_grpc

State = workflow_pb2.ExecutionState
COMPLETED = workflow_pb2.EXECUTION_STATE_COMPLETED
TERMINAL = {
    workflow_pb2.EXECUTION_STATE_COMPLETED,
    workflow_pb2.EXECUTION_STATE_FAILED,
    workflow_pb2.EXECUTION_STATE_CANCELLED,
}


def workflow_message(steps: list[dict[str, Any]], **fields: Any) -> workflow_pb2.Workflow:
    """A Workflow from JSON steps."""
    body = {"display_name": f"wf-{uuid.uuid4().hex[:6]}", "steps": steps, **fields}
    return json_format.ParseDict(body, workflow_pb2.Workflow())


async def create_workflow(
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub,
    steps: list[dict[str, Any]],
    metadata: Any = None,
) -> workflow_pb2.Workflow:
    """Creates a workflow of `steps` over gRPC."""
    return await workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=workflow_message(steps)), metadata=metadata
    )


async def execute(
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub,
    workflow_id: str,
    input: dict[str, Any] | None = None,
    key: str = "",
    metadata: Any = None,
) -> workflow_pb2.Execution:
    """Starts an execution over gRPC."""
    request = workflow_pb2.ExecuteWorkflowRequest(workflow_id=workflow_id, idempotency_key=key)
    request.input.update(input or {})
    return await workflows.ExecuteWorkflow(request, metadata=metadata)


async def wait_state(
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub,
    workflow_id: str,
    execution_id: str,
    states: Collection[Any],
    limit_s: float = 30,
) -> workflow_pb2.Execution:
    """Polls GetExecution until the execution is in one of `states`."""
    async with asyncio.timeout(limit_s):
        while True:
            execution = await workflows.GetExecution(
                workflow_pb2.GetExecutionRequest(workflow_id=workflow_id, execution_id=execution_id)
            )
            if execution.state in states:
                return execution
            await asyncio.sleep(0.05)


async def wait_step(
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub,
    workflow_id: str,
    execution_id: str,
    step_name: str,
    state: int = workflow_pb2.STEP_EXECUTION_STATE_RUNNING,
    limit_s: float = 30,
) -> workflow_pb2.Execution:
    """Polls GetExecution until an attempt of `step_name` is in `state`."""
    async with asyncio.timeout(limit_s):
        while True:
            execution = await workflows.GetExecution(
                workflow_pb2.GetExecutionRequest(workflow_id=workflow_id, execution_id=execution_id)
            )
            if any(s.step_name == step_name and s.state == state for s in execution.steps):
                return execution
            await asyncio.sleep(0.05)


def attempts(execution: workflow_pb2.Execution, key: str) -> list[workflow_pb2.StepExecution]:
    """The attempts of the step with `key`, in order."""
    return [s for s in execution.steps if s.key == key]


def event_from_json(data: dict[str, Any]) -> workflow_pb2.ExecutionEvent:
    """An ExecutionEvent from the edge's JSON."""
    return json_format.ParseDict(data, workflow_pb2.ExecutionEvent())


async def sse(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[workflow_pb2.ExecutionEvent]:
    """The events of an SSE response."""
    async with http.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                yield event_from_json(json.loads(line[len("data:") :]))


def is_terminal(event: workflow_pb2.ExecutionEvent) -> bool:
    """True for the event that ends an execution's stream."""
    return event.WhichOneof("event") == "state_changed" and event.state_changed.state in TERMINAL
