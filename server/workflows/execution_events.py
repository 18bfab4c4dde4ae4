"""The events of an execution's stream (`execution:<id>`): their kinds and
data. Data is the ExecutionEvent field's message as JSON with proto field
names; agent events carry the run event as the run log stores it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aster.server.runs.models import RunEvent
from aster.server.workflows.execution_models import ExecutionState

# One kind per state change that ends the execution, so followers stop there.
TERMINAL_KINDS = {
    ExecutionState.COMPLETED: "execution_completed",
    ExecutionState.FAILED: "execution_failed",
    ExecutionState.CANCELLED: "execution_cancelled",
}
STATE_KINDS = frozenset({"state_changed", *TERMINAL_KINDS.values()})
STEP_KINDS = frozenset({"step_started", "step_completed", "step_failed", "step_retrying"})
AGENT_EVENT = "agent_event"

Event = tuple[str, dict[str, Any]]


def state_changed(state: ExecutionState, step_name: str = "", error: str = "") -> Event:
    """The execution moved to `state`."""
    data: dict[str, Any] = {"state": f"EXECUTION_STATE_{state.value}"}
    if step_name:
        data["step_name"] = step_name
    if error:
        data["error"] = error
    return TERMINAL_KINDS.get(state, "state_changed"), data


def step_started(name: str, attempt: int, value: Any) -> Event:
    """A step attempt started with input `value`."""
    return "step_started", {"step_name": name, "attempt": attempt, "input": value}


def step_completed(name: str, attempt: int, value: Any) -> Event:
    """A step attempt completed with output `value`."""
    return "step_completed", {"step_name": name, "attempt": attempt, "output": value}


def step_failed(name: str, attempt: int, error: str) -> Event:
    """A step attempt failed."""
    return "step_failed", {"step_name": name, "attempt": attempt, "error": error}


def step_retrying(name: str, attempt: int, backoff: timedelta, error: str) -> Event:
    """Attempt `attempt` of a step starts after `backoff`."""
    return "step_retrying", {
        "step_name": name,
        "attempt": attempt,
        "backoff": f"{backoff.total_seconds():.3f}s",
        "error": error,
    }


def agent_event(name: str, attempt: int, event: RunEvent) -> Event:
    """An event of the run an agent step started."""
    return AGENT_EVENT, {
        "step_name": name,
        "attempt": attempt,
        "run": {
            "run_id": event.run_id,
            "session_id": event.session_id,
            "seq": event.seq,
            "attempt": event.attempt,
            "kind": event.kind,
            "data": event.data,
        },
    }
