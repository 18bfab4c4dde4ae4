"""Execution messages ⇄ execution domain types, and stream events →
ExecutionEvent messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2

from aster.server.rpc.convert import dict_to_struct, timestamp
from aster.server.runs.mapping import event_to_proto as run_event_to_proto
from aster.server.runs.models import RunEvent
from aster.server.streams.models import StreamEvent
from aster.server.workflows import execution_events as ev
from aster.server.workflows.execution_models import Execution, StepAttempt
from aster.v1 import run_pb2, workflow_pb2


def _value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def _time(value: datetime | None) -> Any:
    return timestamp(value) if value is not None else None


def step_to_proto(step: StepAttempt) -> workflow_pb2.StepExecution:
    """The StepExecution message of one step attempt."""
    return workflow_pb2.StepExecution(
        step_name=step.step_name,
        attempt=step.attempt,
        state=workflow_pb2.StepExecutionState.Value(f"STEP_EXECUTION_STATE_{step.state.value}"),
        input=_value(step.input),
        output=_value(step.output),
        error=step.error,
        start_time=_time(step.start_time),
        end_time=_time(step.end_time),
        key=step.key,
        run_id=step.run_id,
        wake_time=_time(step.wake_time),
    )


def execution_to_proto(execution: Execution) -> workflow_pb2.Execution:
    """The Execution message of a stored execution, with its step history."""
    return workflow_pb2.Execution(
        id=execution.id,
        workflow_id=execution.workflow_id,
        workflow_version=execution.workflow_version,
        state=workflow_pb2.ExecutionState.Value(f"EXECUTION_STATE_{execution.state.value}"),
        input=dict_to_struct(execution.input),
        output=_value(execution.output),
        error=execution.error,
        steps=[step_to_proto(s) for s in execution.steps],
        idempotency_key=execution.idempotency_key,
        create_time=timestamp(execution.create_time),
        start_time=_time(execution.start_time),
        end_time=_time(execution.end_time),
        last_seq=execution.last_seq,
    )


def event_to_proto(event: StreamEvent, workflow_id: str) -> workflow_pb2.ExecutionEvent:
    """The ExecutionEvent message of an event of `execution:<id>`."""
    message = workflow_pb2.ExecutionEvent(
        execution_id=event.stream.removeprefix("execution:"),
        workflow_id=workflow_id,
        seq=event.seq,
        create_time=_time(event.create_time),
    )
    if event.kind in ev.STATE_KINDS:
        json_format.ParseDict(event.data, message.state_changed)
    elif event.kind == ev.AGENT_EVENT:
        run = event.data["run"]
        chat = _chat_event(run)
        message.agent_event.CopyFrom(
            workflow_pb2.WorkflowStepAgentEvent(
                step_name=event.data["step_name"], attempt=event.data["attempt"], chat_event=chat
            )
        )
    elif event.kind in ev.STEP_KINDS:
        json_format.ParseDict(event.data, getattr(message, event.kind))
    return message


def _chat_event(run: dict[str, Any]) -> run_pb2.ChatEvent:
    return run_event_to_proto(
        RunEvent(
            run_id=run["run_id"],
            session_id=run["session_id"],
            seq=run["seq"],
            attempt=run["attempt"],
            kind=run["kind"],
            data=run["data"],
        )
    )
