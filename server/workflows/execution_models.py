"""Domain types of workflow executions: states, step attempts, executions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class ExecutionState(StrEnum):
    """Where an execution is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the execution can no longer change."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED}
)


class StepState(StrEnum):
    """Where one attempt of a step is in its life."""

    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass
class StepAttempt:
    """One attempt of one step. `key` places the step in the execution: its
    name, prefixed inside loops by the loop and iteration (`loop[2]/name`)."""

    execution_id: str
    key: str
    step_name: str
    kind: str
    attempt: int
    state: StepState
    start_time: datetime
    input: Any = None
    output: Any = None
    error: str = ""
    run_id: str = ""
    wake_time: datetime | None = None
    end_time: datetime | None = None
    position: int = 0


@dataclass
class Execution:
    """One execution of one version of a workflow, with its step history
    (every attempt, in start order). `definition` is the pinned version's
    steps as stored when the execution started."""

    id: str
    tenant: str
    workflow_id: str
    workflow_version: int
    state: ExecutionState
    input: dict[str, Any]
    create_time: datetime
    definition: dict[str, Any] = field(default_factory=dict)
    resume_input: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: str = ""
    idempotency_key: str = ""
    generation: int = 0
    lease_owner: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    steps: list[StepAttempt] = field(default_factory=list)
    last_seq: int = 0
