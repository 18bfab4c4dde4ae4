"""The rules a workflow definition must satisfy. Errors are INVALID_ARGUMENT
naming the field (`workflow.steps[3].condition.expression`) and, in the
ErrorInfo metadata, the step (`step`).

Checks that need the database (do the agent and tool ids exist in the
caller's tenant?) are the service's; `references` lists what to look up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from aster.server.display_text import check_description, check_display_name
from aster.server.errors import InvalidArgument
from aster.server.ids import ID_PATTERN
from aster.server.labels import validate_labels
from aster.server.workflows.cron import CronError, check_cron, zone
from aster.server.workflows.expressions import ExpressionError, compile_expression
from aster.server.workflows.graph import GraphError, WorkflowGraph, build_graph
from aster.server.workflows.models import (
    MAX_ITERATIONS,
    AgentStep,
    ApprovalStep,
    ConditionStep,
    LoopStep,
    ParallelStep,
    RetryPolicy,
    Step,
    StepKind,
    ToolStep,
    WaitStep,
    WorkflowSpec,
)
from aster.server.workflows.templates import compile_template, compile_value

MAX_PROMPT = 10_000
MAX_AGENT_INPUT = 100_000
MAX_ATTEMPTS = 100
MAX_MULTIPLIER = 100.0
# The longest timeout, backoff or wait step.
MAX_DURATION = timedelta(days=365)
MAX_SCHEDULES = 20

# Why a retry policy means nothing on the other kinds of step.
_NO_RETRY = {
    StepKind.PARALLEL: "a composite step is not run again as a whole: put the retry on the "
    "agent and tool steps inside it",
    StepKind.CONDITION: "a composite step is not run again as a whole: put the retry on the "
    "agent and tool steps inside it",
    StepKind.LOOP: "a composite step is not run again as a whole: put the retry on the "
    "agent and tool steps inside it",
    StepKind.APPROVAL: "an approval is decided once: a rejection or a passed timeout fails it "
    "for good",
    StepKind.WAIT: "a wait step cannot fail",
}


@dataclass(frozen=True)
class Reference:
    """An agent or tool id a step uses, and where."""

    field: str
    step: str
    id: str


@dataclass(frozen=True)
class CheckedWorkflow:
    """A valid definition's graph and the ids the service must look up."""

    graph: WorkflowGraph
    agents: tuple[Reference, ...]
    tools: tuple[Reference, ...]


def _fail(field: str, message: str, step: str = "") -> InvalidArgument:
    if step:
        return InvalidArgument(f"{field} (step {step!r}): {message}", field=field, step=step)
    return InvalidArgument(f"{field}: {message}", field=field)


def validate_workflow_spec(spec: WorkflowSpec, prefix: str = "workflow") -> CheckedWorkflow:
    """Raises InvalidArgument for the first rule `spec` breaks."""
    check_display_name(spec.display_name, f"{prefix}.display_name")
    check_description(spec.description, f"{prefix}.description")
    validate_labels(spec.labels, f"{prefix}.labels")
    for i, step in enumerate(spec.steps):
        if step.action is None:
            raise _fail(
                f"{prefix}.steps[{i}]",
                "set exactly one kind: agent, tool, parallel, condition, loop, approval or wait",
                step.name,
            )
    try:
        graph = build_graph(spec.steps)
    except GraphError as error:
        raise _fail(f"{prefix}.{error.field}", error.message, error.step) from None
    names = frozenset(graph.steps)
    agents: list[Reference] = []
    tools: list[Reference] = []
    for i, step in enumerate(spec.steps):
        field = f"{prefix}.steps[{i}]"
        _check_step(step, field, names, graph, agents, tools)
    _check_schedules(spec, prefix)
    return CheckedWorkflow(graph=graph, agents=tuple(agents), tools=tuple(tools))


def _check_step(
    step: Step,
    field: str,
    names: frozenset[str],
    graph: WorkflowGraph,
    agents: list[Reference],
    tools: list[Reference],
) -> None:
    _check_retry_and_timeout(step, field)
    action = step.action
    others = names - {step.name}
    if isinstance(action, AgentStep):
        _check_id(action.agent_id, f"{field}.agent.agent_id", step.name, "agent")
        agents.append(Reference(f"{field}.agent.agent_id", step.name, action.agent_id))
        if len(action.input) > MAX_AGENT_INPUT:
            raise _fail(f"{field}.agent.input", f"at most {MAX_AGENT_INPUT} characters", step.name)
        _template(lambda: compile_template(action.input, others), f"{field}.agent.input", step)
    elif isinstance(action, ToolStep):
        _check_id(action.tool_id, f"{field}.tool.tool_id", step.name, "tool")
        tools.append(Reference(f"{field}.tool.tool_id", step.name, action.tool_id))
        _template(lambda: compile_value(action.arguments, others), f"{field}.tool.arguments", step)
    elif isinstance(action, ParallelStep):
        if not action.branches:
            raise _fail(f"{field}.parallel.branches", "name at least one branch", step.name)
    elif isinstance(action, ConditionStep):
        _expression(action.expression, others, f"{field}.condition.expression", step)
    elif isinstance(action, LoopStep):
        if not action.body:
            raise _fail(f"{field}.loop.body", "name the first step of the body", step.name)
        if not 0 <= action.max_iterations <= MAX_ITERATIONS:
            raise _fail(
                f"{field}.loop.max_iterations",
                f"must be between 0 (the default, 100) and {MAX_ITERATIONS}",
                step.name,
            )
        if action.until:
            _expression(action.until, others, f"{field}.loop.until", step)
    elif isinstance(action, ApprovalStep):
        if len(action.prompt) > MAX_PROMPT:
            raise _fail(f"{field}.approval.prompt", f"at most {MAX_PROMPT} characters", step.name)
    elif isinstance(action, WaitStep):
        _check_duration(action.duration, f"{field}.wait", step.name)


def _check_retry_and_timeout(step: Step, field: str) -> None:
    """`retry` applies to agent and tool steps; `timeout` to every kind
    but wait (see docs/workflows.md, Retries and timeouts)."""
    kind = step.kind
    if kind in _NO_RETRY and step.retry != RetryPolicy():
        raise _fail(
            f"{field}.retry",
            f"retry applies to agent and tool steps only, not to {_a(kind)} step: "
            f"{_NO_RETRY[kind]}",
            step.name,
        )
    _check_retry(step.retry, f"{field}.retry", step.name)
    if step.timeout is None:
        return
    if kind is StepKind.WAIT:
        raise _fail(
            f"{field}.timeout",
            "a wait step takes no timeout: it always waits exactly its duration "
            "(set a shorter wait instead)",
            step.name,
        )
    _check_duration(step.timeout, f"{field}.timeout", step.name)


def _a(kind: StepKind) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _expression(text: str, names: frozenset[str], field: str, step: Step) -> None:
    if not text.strip():
        raise _fail(field, "is required", step.name)
    try:
        compile_expression(text, names)
    except ExpressionError as error:
        raise _fail(field, _own_reference(str(error), step.name), step.name) from None


def _template(check: object, field: str, step: Step) -> None:
    assert callable(check)
    try:
        check()
    except ExpressionError as error:
        raise _fail(field, _own_reference(str(error), step.name), step.name) from None


def _own_reference(message: str, name: str) -> str:
    # The step itself is left out of the known names, so reading one's own
    # output shows as "does not exist"; say what is really wrong.
    return message.replace(
        f"refers to step {name!r}, which does not exist",
        f"refers to step {name!r} itself; a step reads only other steps' outputs",
    )


def _check_id(value: str, field: str, step: str, what: str) -> None:
    if not value:
        raise _fail(field, f"name the {what} to use", step)
    if not ID_PATTERN.match(value):
        raise _fail(field, f"{value[:80]!r} is not a well-formed {what} id", step)


def _check_duration(value: timedelta, field: str, step: str) -> None:
    if value < timedelta(0):
        raise _fail(field, "must not be negative", step)
    if value > MAX_DURATION:
        raise _fail(field, "must be at most 365 days", step)


def _check_retry(retry: RetryPolicy, field: str, step: str) -> None:
    if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
        raise _fail(
            f"{field}.max_attempts", f"must be between 0 (one attempt) and {MAX_ATTEMPTS}", step
        )
    _check_duration(retry.initial_backoff, f"{field}.initial_backoff", step)
    multiplier = retry.backoff_multiplier
    if not (math.isfinite(multiplier) and 1 <= multiplier <= MAX_MULTIPLIER):
        raise _fail(
            f"{field}.backoff_multiplier",
            f"must be 0 (meaning 1) or between 1 and {MAX_MULTIPLIER:g}",
            step,
        )
    if retry.max_backoff is not None:
        _check_duration(retry.max_backoff, f"{field}.max_backoff", step)
        if retry.max_backoff < retry.initial_backoff:
            raise _fail(f"{field}.max_backoff", "must not be shorter than initial_backoff", step)


def _check_schedules(spec: WorkflowSpec, prefix: str) -> None:
    if len(spec.schedules) > MAX_SCHEDULES:
        raise _fail(f"{prefix}.schedules", f"at most {MAX_SCHEDULES} schedules")
    seen: dict[str, int] = {}
    for i, schedule in enumerate(spec.schedules):
        field = f"{prefix}.schedules[{i}]"
        if schedule.id:
            if not ID_PATTERN.match(schedule.id):
                raise _fail(
                    f"{field}.id",
                    f"{schedule.id[:80]!r} is malformed: use 1-63 lower-case letters, digits, "
                    "'-' or '_', starting with a letter",
                )
            if schedule.id in seen:
                raise _fail(
                    f"{field}.id", f"{schedule.id!r} is also schedules[{seen[schedule.id]}]"
                )
            seen[schedule.id] = i
        try:
            check_cron(schedule.cron)
        except CronError as error:
            raise _fail(f"{field}.cron", str(error)) from None
        try:
            zone(schedule.time_zone)
        except CronError as error:
            raise _fail(f"{field}.time_zone", str(error)) from None
        if (
            schedule.start_time is not None
            and schedule.end_time is not None
            and schedule.end_time < schedule.start_time
        ):
            raise _fail(f"{field}.end_time", "must not be before start_time")
