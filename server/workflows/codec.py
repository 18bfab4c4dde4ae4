"""Workflow definitions as plain JSON data (for storage and execution
snapshots) and back. Durations are seconds (floats), times ISO 8601."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aster.server.clock import as_utc
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
    StepKind,
    ToolStep,
    WaitStep,
    WorkflowSpec,
)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _delta(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: str | None) -> datetime | None:
    return None if value is None else as_utc(datetime.fromisoformat(value))


def _action_to_json(action: Action | None) -> dict[str, Any]:
    if isinstance(action, AgentStep):
        return {"agent_id": action.agent_id, "input": action.input}
    if isinstance(action, ToolStep):
        return {"tool_id": action.tool_id, "arguments": action.arguments}
    if isinstance(action, ParallelStep):
        return {"branches": list(action.branches), "join": action.join.value}
    if isinstance(action, ConditionStep):
        return {
            "expression": action.expression,
            "then_step": action.then_step,
            "else_step": action.else_step,
        }
    if isinstance(action, LoopStep):
        return {"body": action.body, "until": action.until, "max_iterations": action.max_iterations}
    if isinstance(action, ApprovalStep):
        return {"prompt": action.prompt}
    if isinstance(action, WaitStep):
        return {"seconds": action.duration.total_seconds()}
    return {}


def _action_from_json(kind: str | None, data: dict[str, Any]) -> Action | None:
    if kind == StepKind.AGENT:
        return AgentStep(agent_id=data["agent_id"], input=data["input"])
    if kind == StepKind.TOOL:
        return ToolStep(tool_id=data["tool_id"], arguments=data["arguments"])
    if kind == StepKind.PARALLEL:
        return ParallelStep(branches=tuple(data["branches"]), join=ParallelJoin(data["join"]))
    if kind == StepKind.CONDITION:
        return ConditionStep(
            expression=data["expression"], then_step=data["then_step"], else_step=data["else_step"]
        )
    if kind == StepKind.LOOP:
        return LoopStep(
            body=data["body"], until=data["until"], max_iterations=data["max_iterations"]
        )
    if kind == StepKind.APPROVAL:
        return ApprovalStep(prompt=data["prompt"])
    if kind == StepKind.WAIT:
        return WaitStep(duration=timedelta(seconds=data["seconds"]))
    return None


def step_to_json(step: Step) -> dict[str, Any]:
    """One step as JSON data."""
    retry = step.retry
    return {
        "name": step.name,
        "kind": None if step.kind is None else step.kind.value,
        "action": _action_to_json(step.action),
        "next": step.next,
        "retry": {
            "max_attempts": retry.max_attempts,
            "initial_backoff": _seconds(retry.initial_backoff),
            "backoff_multiplier": retry.backoff_multiplier,
            "max_backoff": _seconds(retry.max_backoff),
        },
        "timeout": _seconds(step.timeout),
    }


def step_from_json(data: dict[str, Any]) -> Step:
    """One step from `step_to_json` data."""
    retry = data["retry"]
    return Step(
        name=data["name"],
        action=_action_from_json(data["kind"], data["action"]),
        next=data["next"],
        retry=RetryPolicy(
            max_attempts=retry["max_attempts"],
            initial_backoff=timedelta(seconds=retry["initial_backoff"]),
            backoff_multiplier=retry["backoff_multiplier"],
            max_backoff=_delta(retry["max_backoff"]),
        ),
        timeout=_delta(data["timeout"]),
    )


def schedule_to_json(schedule: Schedule) -> dict[str, Any]:
    """One schedule as JSON data."""
    return {
        "id": schedule.id,
        "cron": schedule.cron,
        "time_zone": schedule.time_zone,
        "start_time": _iso(schedule.start_time),
        "end_time": _iso(schedule.end_time),
        "paused": schedule.paused,
        "input": schedule.input,
    }


def schedule_from_json(data: dict[str, Any]) -> Schedule:
    """One schedule from `schedule_to_json` data."""
    return Schedule(
        id=data["id"],
        cron=data["cron"],
        time_zone=data["time_zone"],
        start_time=_time(data["start_time"]),
        end_time=_time(data["end_time"]),
        paused=data["paused"],
        input=data["input"],
    )


def spec_to_json(spec: WorkflowSpec) -> dict[str, Any]:
    """A whole definition as JSON data."""
    return {
        "display_name": spec.display_name,
        "description": spec.description,
        "steps": [step_to_json(s) for s in spec.steps],
        "schedules": [schedule_to_json(s) for s in spec.schedules],
        "labels": dict(spec.labels),
        "metadata": spec.metadata,
    }


def spec_from_json(data: dict[str, Any]) -> WorkflowSpec:
    """A whole definition from `spec_to_json` data."""
    return WorkflowSpec(
        display_name=data["display_name"],
        description=data["description"],
        steps=[step_from_json(s) for s in data["steps"]],
        schedules=[schedule_from_json(s) for s in data["schedules"]],
        labels=dict(data["labels"]),
        metadata=dict(data["metadata"]),
    )
