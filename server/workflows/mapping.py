"""Workflow definition messages ⇄ workflow domain types."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from aster.server.rpc.convert import (
    dict_to_struct,
    struct_to_dict,
    timestamp,
    to_datetime,
    to_timedelta,
)
from aster.server.workflows.models import (
    Action,
    AgentStep,
    ApprovalStep,
    ConditionStep,
    LoopStep,
    ParallelJoin,
    ParallelStep,
    RetryPolicy,
    Schedule,
    Step,
    ToolStep,
    WaitStep,
    Workflow,
    WorkflowSpec,
)
from aster.v1 import workflow_pb2

# Fields of Workflow that the server owns; an empty update mask ignores them.
OUTPUT_FIELDS = frozenset({"id", "version", "etag", "create_time", "update_time"})

_JOIN_FROM_PROTO = {
    workflow_pb2.PARALLEL_JOIN_UNSPECIFIED: ParallelJoin.ALL,
    workflow_pb2.PARALLEL_JOIN_ALL: ParallelJoin.ALL,
    workflow_pb2.PARALLEL_JOIN_ANY: ParallelJoin.ANY,
}
_JOIN_TO_PROTO = {
    ParallelJoin.ALL: workflow_pb2.PARALLEL_JOIN_ALL,
    ParallelJoin.ANY: workflow_pb2.PARALLEL_JOIN_ANY,
}


def spec_from_proto(message: workflow_pb2.Workflow, prefix: str = "workflow") -> WorkflowSpec:
    """The caller-settable fields of `message`."""
    return WorkflowSpec(
        display_name=message.display_name,
        description=message.description,
        steps=[_step(s, f"{prefix}.steps[{i}]") for i, s in enumerate(message.steps)],
        schedules=[
            _schedule(s, f"{prefix}.schedules[{i}]") for i, s in enumerate(message.schedules)
        ],
        labels=dict(message.labels),
        metadata=struct_to_dict(message.metadata, f"{prefix}.metadata"),
    )


def _step(message: workflow_pb2.WorkflowStep, field: str) -> Step:
    retry = RetryPolicy()
    if message.HasField("retry"):
        policy = message.retry
        retry = RetryPolicy(
            max_attempts=policy.max_attempts or 1,
            initial_backoff=to_timedelta(policy.initial_backoff, f"{field}.retry.initial_backoff"),
            backoff_multiplier=policy.backoff_multiplier or 1.0,
            max_backoff=(
                to_timedelta(policy.max_backoff, f"{field}.retry.max_backoff")
                if policy.HasField("max_backoff")
                else None
            ),
        )
    timeout = None
    if message.HasField("timeout"):
        timeout = to_timedelta(message.timeout, f"{field}.timeout") or None
    return Step(
        name=message.name,
        action=_action(message, field),
        next=message.next,
        retry=retry,
        timeout=timeout,
    )


def _action(message: workflow_pb2.WorkflowStep, field: str) -> Action | None:
    kind = message.WhichOneof("kind")
    if kind == "agent":
        return AgentStep(agent_id=message.agent.agent_id, input=message.agent.input)
    if kind == "tool":
        return ToolStep(
            tool_id=message.tool.tool_id,
            arguments=struct_to_dict(message.tool.arguments, f"{field}.tool.arguments"),
        )
    if kind == "parallel":
        return ParallelStep(
            branches=tuple(message.parallel.branches),
            join=_JOIN_FROM_PROTO.get(message.parallel.join, ParallelJoin.ALL),
        )
    if kind == "condition":
        condition = message.condition
        return ConditionStep(
            expression=condition.expression,
            then_step=condition.then_step,
            else_step=condition.else_step,
        )
    if kind == "loop":
        loop = message.loop
        return LoopStep(body=loop.body, until=loop.until, max_iterations=loop.max_iterations)
    if kind == "approval":
        return ApprovalStep(prompt=message.approval.prompt)
    if kind == "wait":
        return WaitStep(duration=to_timedelta(message.wait, f"{field}.wait"))
    return None


def _schedule(message: workflow_pb2.WorkflowSchedule, field: str) -> Schedule:
    return Schedule(
        id=message.id,
        cron=message.cron,
        time_zone=message.time_zone,
        start_time=(
            to_datetime(message.start_time, f"{field}.start_time")
            if message.HasField("start_time")
            else None
        ),
        end_time=(
            to_datetime(message.end_time, f"{field}.end_time")
            if message.HasField("end_time")
            else None
        ),
        paused=message.paused,
        input=struct_to_dict(message.input, f"{field}.input"),
    )


def set_fields(message: workflow_pb2.Workflow) -> list[str]:
    """The implied update mask: every caller-settable field `message` sets."""
    return [f.name for f, _ in message.ListFields() if f.name not in OUTPUT_FIELDS]


def _duration(value: timedelta) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def _time(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if value is None else timestamp(value)


def step_to_proto(step: Step) -> workflow_pb2.WorkflowStep:
    """The message of one step."""
    message = workflow_pb2.WorkflowStep(name=step.name, next=step.next)
    retry = step.retry
    if retry != RetryPolicy():
        message.retry.CopyFrom(
            workflow_pb2.WorkflowRetryPolicy(
                max_attempts=retry.max_attempts,
                initial_backoff=_duration(retry.initial_backoff),
                backoff_multiplier=retry.backoff_multiplier,
                max_backoff=(None if retry.max_backoff is None else _duration(retry.max_backoff)),
            )
        )
    if step.timeout is not None:
        message.timeout.CopyFrom(_duration(step.timeout))
    action = step.action
    if isinstance(action, AgentStep):
        message.agent.CopyFrom(
            workflow_pb2.WorkflowAgentStep(agent_id=action.agent_id, input=action.input)
        )
    elif isinstance(action, ToolStep):
        message.tool.CopyFrom(
            workflow_pb2.WorkflowToolStep(
                tool_id=action.tool_id, arguments=dict_to_struct(action.arguments)
            )
        )
    elif isinstance(action, ParallelStep):
        message.parallel.CopyFrom(
            workflow_pb2.WorkflowParallelStep(
                branches=action.branches, join=_JOIN_TO_PROTO[action.join]
            )
        )
    elif isinstance(action, ConditionStep):
        message.condition.CopyFrom(
            workflow_pb2.WorkflowConditionStep(
                expression=action.expression,
                then_step=action.then_step,
                else_step=action.else_step,
            )
        )
    elif isinstance(action, LoopStep):
        message.loop.CopyFrom(
            workflow_pb2.WorkflowLoopStep(
                body=action.body, until=action.until, max_iterations=action.max_iterations
            )
        )
    elif isinstance(action, ApprovalStep):
        message.approval.CopyFrom(workflow_pb2.WorkflowApprovalStep(prompt=action.prompt))
    elif isinstance(action, WaitStep):
        message.wait.CopyFrom(_duration(action.duration))
    return message


def schedule_to_proto(schedule: Schedule) -> workflow_pb2.WorkflowSchedule:
    """The message of one schedule."""
    return workflow_pb2.WorkflowSchedule(
        id=schedule.id,
        cron=schedule.cron,
        time_zone=schedule.time_zone,
        start_time=_time(schedule.start_time),
        end_time=_time(schedule.end_time),
        paused=schedule.paused,
        input=dict_to_struct(schedule.input),
    )


def workflow_to_proto(workflow: Workflow) -> workflow_pb2.Workflow:
    """The full message of a stored workflow version."""
    spec = workflow.spec
    return workflow_pb2.Workflow(
        id=workflow.id,
        display_name=spec.display_name,
        description=spec.description,
        version=workflow.version,
        steps=[step_to_proto(s) for s in spec.steps],
        schedules=[schedule_to_proto(s) for s in spec.schedules],
        labels=spec.labels,
        metadata=dict_to_struct(spec.metadata),
        create_time=timestamp(workflow.create_time),
        update_time=timestamp(workflow.update_time),
        etag=workflow.etag,
    )
