"""Domain types of a workflow definition: steps, retry policies, schedules,
versions.

The graph model (checked by `aster.server.workflows.graph`)
-----------------------------------------------------------
A workflow is a tree of *chains*. A chain is a run of steps linked by
`next`: it starts at one step, and each step, once complete, hands over to
its `next`; a step with an empty `next` ends the chain.

- The execution runs the *main chain*, which starts at `steps[0]`.
- A composite step owns sub-chains and completes when they are done:
  `parallel` runs the chain of each name in `branches` at the same time
  (join `all`: every branch completed; `any`: the first one);
  `condition` runs the chain of `then_step` or of `else_step` (an empty
  name runs nothing); `loop` runs the chain that starts at `body` again and
  again until `until` holds after an iteration, or `max_iterations` ran.
  Then the composite step's own `next` follows.
- Every step except `steps[0]` is entered from exactly one place: one
  step's `next`, one parallel branch, one condition arm or one loop body.

So a step that nothing enters is unreachable, a step entered from two places
is ambiguous, and a `next` that leads back to a step already on the way is a
*cycle outside a loop* (repetition is only ever a `loop` step). All three are
INVALID_ARGUMENT, as is a *dangling reference*: a name in `next`, a branch, an
arm, a loop body or an expression (`steps.<name>`) that is no step.

Data: expressions and templates see `input` (the execution's input) and
`steps.<name>.output` (the output of a step that has completed). What each
kind outputs is set by the executions side (see `docs/workflows.md`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from aster.server.etags import etag_for

# 0 in `LoopStep.max_iterations` means this many.
DEFAULT_MAX_ITERATIONS = 100
MAX_ITERATIONS = 10_000


class StepKind(StrEnum):
    """What a step does."""

    AGENT = "agent"
    TOOL = "tool"
    PARALLEL = "parallel"
    CONDITION = "condition"
    LOOP = "loop"
    APPROVAL = "approval"
    WAIT = "wait"


class ParallelJoin(StrEnum):
    """When a parallel step completes."""

    ALL = "all"
    ANY = "any"


@dataclass(frozen=True)
class RetryPolicy:
    """How a step's failed attempts are retried. `max_attempts` counts the
    first attempt; the wait before attempt n (n >= 2) is
    `initial_backoff * backoff_multiplier ** (n - 2)`, capped at `max_backoff`
    when that is set."""

    max_attempts: int = 1
    initial_backoff: timedelta = timedelta(0)
    backoff_multiplier: float = 1.0
    max_backoff: timedelta | None = None

    def backoff(self, attempt: int) -> timedelta:
        """How long to wait before attempt `attempt` (2 or more) starts."""
        if attempt < 2:
            return timedelta(0)
        seconds = self.initial_backoff.total_seconds() * self.backoff_multiplier ** (attempt - 2)
        if self.max_backoff is not None:
            seconds = min(seconds, self.max_backoff.total_seconds())
        return timedelta(seconds=min(seconds, timedelta.max.total_seconds() / 2))


@dataclass(frozen=True)
class AgentStep:
    """Run agent `agent_id` on one message: `input`, a template."""

    agent_id: str
    input: str = ""


@dataclass(frozen=True)
class ToolStep:
    """Call tool `tool_id` with `arguments`, whose strings are templates
    (see `aster.server.workflows.templates.render_value`)."""

    tool_id: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParallelStep:
    """Run the chain of each name in `branches` at the same time."""

    branches: tuple[str, ...]
    join: ParallelJoin = ParallelJoin.ALL


@dataclass(frozen=True)
class ConditionStep:
    """Evaluate `expression`; run the chain of `then_step` when true, of
    `else_step` when false (an empty name: nothing)."""

    expression: str
    then_step: str = ""
    else_step: str = ""


@dataclass(frozen=True)
class LoopStep:
    """Run the chain that starts at `body`, then check `until` (empty: never
    true); repeat until it holds or `max_iterations` iterations ran (0: the
    server default, DEFAULT_MAX_ITERATIONS). Reaching the limit without
    `until` holding completes the loop (it does not fail)."""

    body: str
    until: str = ""
    max_iterations: int = 0

    @property
    def iteration_limit(self) -> int:
        """`max_iterations`, with 0 meaning the default."""
        return self.max_iterations or DEFAULT_MAX_ITERATIONS


@dataclass(frozen=True)
class ApprovalStep:
    """Suspend until ApproveExecution or RejectExecution; `prompt` says what
    the approver is asked."""

    prompt: str = ""


@dataclass(frozen=True)
class WaitStep:
    """Wait `duration`, then go on."""

    duration: timedelta


Action = AgentStep | ToolStep | ParallelStep | ConditionStep | LoopStep | ApprovalStep | WaitStep

_KINDS: dict[type[Any], StepKind] = {
    AgentStep: StepKind.AGENT,
    ToolStep: StepKind.TOOL,
    ParallelStep: StepKind.PARALLEL,
    ConditionStep: StepKind.CONDITION,
    LoopStep: StepKind.LOOP,
    ApprovalStep: StepKind.APPROVAL,
    WaitStep: StepKind.WAIT,
}


@dataclass(frozen=True)
class Step:
    """One named step: what it does (`action`), where the chain goes next,
    how failed attempts are retried and how long one attempt may take
    (None: no limit)."""

    name: str
    action: Action | None
    next: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta | None = None

    @property
    def kind(self) -> StepKind | None:
        """The step's kind; None if no action is set (invalid)."""
        return None if self.action is None else _KINDS[type(self.action)]


@dataclass(frozen=True)
class Schedule:
    """A cron schedule that starts the workflow with `input`.

    `cron` has five fields (minute hour day-of-month month day-of-week), or
    six with seconds last. It is read in `time_zone` (IANA; "" is UTC). No
    firing happens before `start_time` or after `end_time` (both inclusive),
    nor while `paused`. `id` is unique within the workflow; the server
    assigns one when it is empty."""

    id: str
    cron: str
    time_zone: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    paused: bool = False
    input: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkflowSpec:
    """The fields of a workflow a caller sets."""

    display_name: str = ""
    description: str = ""
    steps: list[Step] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workflow:
    """One version of a stored workflow. `create_time` is when the workflow
    was created; `update_time` when this version was made."""

    id: str
    spec: WorkflowSpec
    version: int
    create_time: datetime
    update_time: datetime

    @property
    def etag(self) -> str:
        """The etag of this version."""
        return etag_for(self.id, self.version)

    def step(self, name: str) -> Step:
        """The step called `name` (KeyError if none)."""
        for step in self.spec.steps:
            if step.name == name:
                return step
        raise KeyError(name)


@dataclass(frozen=True)
class WorkflowFilter:
    """A parsed ListWorkflows filter: every condition must hold."""

    labels_equal: tuple[tuple[str, str], ...] = ()
    labels_present: tuple[str, ...] = ()


@dataclass(frozen=True)
class DueSchedule:
    """A schedule as the scheduler sees it: where it belongs and where its
    firings stand (`last_fire_time`: the latest firing handled, or None)."""

    tenant: str
    workflow_id: str
    schedule: Schedule
    create_time: datetime
    last_fire_time: datetime | None
