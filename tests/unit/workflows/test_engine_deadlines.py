"""Composite and approval deadlines in the engine, against an in-memory
repository: an approval inside a composite step with a timeout waits until
that step's deadline at the latest, and a replay past a deadline fails the
composite step at once, counting from its first attempt."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from aster.server.clock import utcnow
from aster.server.workflows import engine as engine_module
from aster.server.workflows.engine import ExecutionRun
from aster.server.workflows.execution_models import (
    ExecutionState,
    StepAttempt,
    StepState,
)
from aster.server.workflows.graph import build_graph
from aster.server.workflows.models import ApprovalStep, LoopStep, Step, WaitStep
from tests.unit.workflows.engine_fakes import execution_run


class Repository:
    """Keeps what the engine writes."""

    def __init__(self) -> None:
        self.started: list[StepAttempt] = []
        self.ends: list[Any] = []
        self.cancelled: list[tuple[set[str], str, str]] = []
        self.finished: list[tuple[ExecutionState, dict[str, Any]]] = []

    async def add_step(self, *args: Any, ends: Any = (), **_: Any) -> list[Any]:
        self.started.append(args[3])
        self.ends.extend(ends)
        return []

    async def end_steps(self, *args: Any) -> list[Any]:
        self.ends.extend(args[4])
        return []

    async def emit(self, *args: Any) -> list[Any]:
        return []

    async def cancel_open_steps(self, *args: Any) -> None:
        _, _, _, names, prefix, error, _ = args
        self.cancelled.append((set(names), prefix, error))

    async def finish(self, *args: Any, **values: Any) -> list[Any]:
        self.finished.append((args[4], values))
        return []


STEPS = [
    Step("around", LoopStep(body="ask", max_iterations=1), timeout=timedelta(seconds=30)),
    Step("ask", ApprovalStep(prompt="?"), next="nap", timeout=timedelta(seconds=60)),
    Step("nap", WaitStep(duration=timedelta(hours=1))),
]


def run_of(repository: Repository, steps: list[StepAttempt]) -> ExecutionRun:
    return execution_run(repository, build_graph(STEPS), steps)


async def test_an_approval_waits_until_the_deadline_of_the_loop_around_it() -> None:
    repository = Repository()
    await run_of(repository, []).run()
    loop, ask = repository.started
    assert (loop.key, ask.key) == ("around", "around[1]/ask")
    # The loop's 30 s come before the approval's own 60 s.
    assert ask.wake_time == loop.start_time + timedelta(seconds=30)
    assert repository.finished[-1][0] is ExecutionState.WAITING_APPROVAL


async def test_a_replay_past_the_deadline_of_the_first_attempt_fails_at_once() -> None:
    repository = Repository()
    first_start = utcnow() - timedelta(seconds=31)
    history = [
        # Interrupted by a shutdown: the deadline still counts from here.
        StepAttempt("exe_1", "around", "around", "loop", 1, StepState.CANCELLED, first_start),
        StepAttempt(
            "exe_1",
            "around[1]/ask",
            "ask",
            "approval",
            1,
            StepState.WAITING,
            first_start,
            wake_time=first_start + timedelta(seconds=30),
        ),
    ]
    await run_of(repository, history).run()
    (second,) = repository.started
    assert (second.key, second.attempt) == ("around", 2)
    error = "step 'around' timed out: the steps inside it took longer than 30 s (its timeout)"
    assert repository.cancelled == [
        ({"ask", "nap"}, "around[", "cancelled: step 'around' timed out")
    ]
    assert repository.finished[-1] == (
        ExecutionState.FAILED,
        {"output": None, "error": error, "end_time": repository.finished[-1][1]["end_time"]},
    )
    assert [(key, attempt, values["state"]) for key, attempt, values in repository.ends] == [
        ("around", 2, StepState.FAILED.value)
    ]


async def test_an_approval_past_its_own_timeout_fails() -> None:
    repository = Repository()
    start = utcnow() - timedelta(seconds=61)
    steps = [
        StepAttempt("exe_1", "around", "around", "loop", 1, StepState.RUNNING, utcnow()),
        StepAttempt("exe_1", "around[1]/ask", "ask", "approval", 1, StepState.WAITING, start),
    ]
    await run_of(repository, steps).run()
    state, values = repository.finished[-1]
    assert state is ExecutionState.FAILED
    assert values["error"] == "step 'ask' failed: approval not given within 60 s (its timeout)"


async def test_stopping_a_body_waits_for_its_clean_up_even_when_cancelled_meanwhile() -> None:
    cleaned = asyncio.Event()

    async def body() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.1)
            cleaned.set()

    child = asyncio.create_task(body())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(engine_module._cancel_and_wait(child))
    await asyncio.sleep(0.02)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert cleaned.is_set() and child.cancelled()
