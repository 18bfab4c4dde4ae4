"""Domain types of runs and their events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class LeaseLost(Exception):
    """This worker no longer holds the run: another attempt owns it now."""


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the run can no longer change."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class OnDisconnect(StrEnum):
    """What a dropped stream does to its run."""

    CANCEL = "CANCEL"
    CONTINUE = "CONTINUE"


class MultitaskStrategy(StrEnum):
    """What a new message does while its session has an active run."""

    REJECT = "REJECT"
    ENQUEUE = "ENQUEUE"
    INTERRUPT = "INTERRUPT"


@dataclass
class Run:
    """A stored run."""

    id: str
    tenant: str
    agent_id: str
    session_id: str
    status: RunStatus
    input_text: str
    create_time: datetime
    attempt: int = 1
    background: bool = False
    on_disconnect: OnDisconnect = OnDisconnect.CANCEL
    after_run_id: str = ""
    input_message_id: str = ""
    result_message_id: str = ""
    result_text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    first_token_ms: float | None = None
    last_seq: int = 0
    lease_owner: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class RunEvent:
    """One event of a run's stream. `kind` names the ChatEvent field
    (`text_delta`, `run_finished` ...) and `data` holds that message as JSON
    with proto field names."""

    run_id: str
    session_id: str
    seq: int
    attempt: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None

    @property
    def terminal(self) -> bool:
        """True for the run's last event."""
        return self.kind == "run_finished"


@dataclass(frozen=True)
class RunRequest:
    """What a caller asks for when starting a run."""

    agent_id: str
    message: str
    session_id: str = ""
    on_disconnect: OnDisconnect = OnDisconnect.CANCEL
    multitask_strategy: MultitaskStrategy = MultitaskStrategy.REJECT
    background: bool = False


@dataclass(frozen=True)
class AgentActivity:
    """What an agent is doing now."""

    agent_id: str
    active_runs: int
    last_activity_time: datetime | None


@dataclass(frozen=True)
class AgentRunStats:
    """An agent's run statistics."""

    agent_id: str
    runs_by_status: dict[str, int]
    input_tokens: int
    output_tokens: int
    avg_time_to_first_token_ms: float
