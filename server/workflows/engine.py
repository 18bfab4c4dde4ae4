"""The durable step engine: drives one leased execution from its recorded
history to its end (or to a wait for approval).

Every time a worker takes an execution it replays the workflow from the
start against the stored step attempts: a step whose latest attempt
COMPLETED is not run again (its stored output is used); one that was
interrupted (RUNNING when its worker died, or stopped by a suspend) starts
again as its next attempt; a waiting wait step goes on waiting until its
stored wake-up time. Each attempt's start and end are stored (with their
events, in the same transaction) before the engine moves on, and every
write is fenced by the lease, so a worker that lost the execution writes
nothing more.

Timeouts: an agent or tool step's `timeout` bounds each attempt; a
composite step's bounds the whole step, counted from its first attempt's
recorded start (so a restart does not give it more time): when it passes,
the steps running inside are cancelled and the composite step fails. An
approval's `timeout` is its deadline, stored as the attempt's `wake_time`
(the earliest of it and the deadlines of the composite steps around it);
the worker wakes a parked execution whose deadline passed, and the replay
fails the approval (or the composite step)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from aster.server.clock import utcnow
from aster.server.runs.dependencies import ToolRunner
from aster.server.runs.models import RunEvent
from aster.server.storage.execution_repository import (
    ExecutionFenced,
    ExecutionRepository,
    StepEnd,
)
from aster.server.storage.stream_repository import NewEvent
from aster.server.streams.log import StreamLog
from aster.server.streams.models import StreamEvent
from aster.server.workflows import execution_events as ev
from aster.server.workflows.execution_models import (
    Execution,
    ExecutionState,
    StepAttempt,
    StepState,
)
from aster.server.workflows.expressions import ExpressionError, compile_expression
from aster.server.workflows.graph import WorkflowGraph
from aster.server.workflows.models import (
    AgentStep,
    ApprovalStep,
    ConditionStep,
    LoopStep,
    ParallelJoin,
    ParallelStep,
    Step,
    ToolStep,
    WaitStep,
)
from aster.server.workflows.step_actions import (
    AgentStepRunner,
    StepError,
    call_tool,
    tool_idempotency_key,
)
from aster.server.workflows.templates import render_text, render_value

_log = structlog.get_logger("aster.workflows")

INTERRUPTED = "interrupted: the attempt did not finish (its server stopped, or it was suspended)"
STOPPED_BRANCH = "cancelled: the parallel step stopped this branch"

# The deadlines of the composite steps (with a timeout) the current task
# runs inside, outermost first: an approval started there waits until the
# earliest of them at the latest.
_DEADLINES: ContextVar[tuple[datetime, ...]] = ContextVar("workflow_deadlines", default=())


class StepFailed(Exception):
    """A step failed for good: the execution fails with this message."""


class Parked(Exception):
    """An approval step waits: the execution stops until it is decided."""

    def __init__(self, step_name: str) -> None:
        super().__init__(step_name)
        self.step_name = step_name


@dataclass(frozen=True)
class EngineDependencies:
    """What the engine needs from the rest of the server."""

    executions: ExecutionRepository
    streams: StreamLog
    tools: ToolRunner
    agents: AgentStepRunner


class ExecutionRun:
    """One worker's take of one execution (one lease generation)."""

    def __init__(
        self, deps: EngineDependencies, execution: Execution, graph: WorkflowGraph, owner: str
    ) -> None:
        self._deps = deps
        self._repo = deps.executions
        self._execution = execution
        self._graph = graph
        self._owner = owner
        self._generation = execution.generation
        self._tenant = execution.tenant
        self._history: dict[str, list[StepAttempt]] = {}
        for attempt in execution.steps:
            self._history.setdefault(attempt.key, []).append(attempt)
        for attempts in self._history.values():
            attempts.sort(key=lambda a: a.attempt)
        # Ends of completed attempts not stored yet: the next write of this
        # take stores them in its transaction (the next step's start, at
        # the latest), so a step's result is durable before the next step
        # does anything, at one commit per step instead of two.
        self._deferred: list[tuple[StepEnd, list[NewEvent]]] = []
        # Parallel branches share `_deferred`: one write at a time takes it.
        self._write_lock = asyncio.Lock()
        # Why a parallel step (by key) stops its branches, when not the default.
        self._stop_reasons: dict[str, str] = {}
        # The latest output of each step by name, as expressions see them.
        self._outputs: dict[str, Any] = {}
        done = [a for a in execution.steps if a.state is StepState.COMPLETED]
        for attempt in sorted(done, key=lambda a: (a.end_time or a.start_time, a.position)):
            self._outputs[attempt.step_name] = attempt.output

    # -- the execution -----------------------------------------------------------

    async def run(self) -> None:
        """Drives the execution to its end or to an approval; returns
        quietly if the worker loses it (fencing)."""
        execution = self._execution
        try:
            await self._emit([ev.state_changed(ExecutionState.RUNNING)])
            try:
                output = await self._chain(self._graph.entry, "")
            except StepFailed as failed:
                await self._finish(ExecutionState.FAILED, error=str(failed))
            except Parked as parked:
                await self._finish(ExecutionState.WAITING_APPROVAL, step_name=parked.step_name)
            else:
                await self._finish(ExecutionState.COMPLETED, output=output)
        except asyncio.CancelledError:
            # Stopped (shutdown, or a control call): keep the results of
            # completed steps if the lease still allows it.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flush())
            raise
        except ExecutionFenced:
            _log.info("execution taken away from this worker", execution_id=execution.id)

    async def _finish(
        self,
        state: ExecutionState,
        *,
        output: Any = None,
        error: str = "",
        step_name: str = "",
    ) -> None:
        await self._flush()
        values: dict[str, Any] = {}
        if state.terminal:
            values.update(output=output, error=error, end_time=utcnow())
        stored = await self._repo.finish(
            self._owner,
            self._generation,
            self._tenant,
            self._execution.id,
            state,
            [ev.state_changed(state, step_name=step_name, error=error)],
            **values,
        )
        await self._publish(stored)
        _log.info("execution stopped", execution_id=self._execution.id, state=state.value)

    async def _emit(self, events: list[NewEvent]) -> None:
        await self._flush()
        await self._publish(
            await self._repo.emit(
                self._owner, self._generation, self._tenant, self._execution.id, events
            )
        )

    async def _flush(self) -> None:
        """Stores the deferred ends of completed attempts now."""
        if not self._deferred:
            return

        async def write(pending: list[tuple[StepEnd, list[NewEvent]]]) -> list[StreamEvent]:
            return await self._repo.end_steps(
                self._owner,
                self._generation,
                self._tenant,
                self._execution.id,
                [end for end, _ in pending],
                [event for _, events in pending for event in events],
            )

        await self._with_deferred(write)

    async def _with_deferred(
        self,
        write: Callable[[list[tuple[StepEnd, list[NewEvent]]]], Awaitable[list[StreamEvent]]],
    ) -> list[StreamEvent]:
        """Runs `write`, which also stores the deferred ends, and publishes
        what it stored. Writes run one at a time, in order, and a cancel
        (a parallel step stopping a branch) waits for the write it
        interrupts: the ends it carries may be another branch's results."""
        async with self._write_lock:
            pending, self._deferred = self._deferred, []

            async def store() -> list[StreamEvent]:
                stored = await write(pending)
                await self._publish(stored)
                return stored

            task = asyncio.ensure_future(store())
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                while not task.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({task})
                raise

    async def _publish(self, events: list[StreamEvent]) -> None:
        await self._deps.streams.publish(events)

    def _context(self) -> dict[str, Any]:
        data = dict(self._execution.input)
        if self._execution.resume_input:
            data["resume"] = self._execution.resume_input
        return {
            "input": data,
            "steps": {name: {"output": value} for name, value in self._outputs.items()},
        }

    # -- chains and steps ---------------------------------------------------------

    async def _chain(self, start: str, prefix: str) -> Any:
        """Runs the chain from `start`; its value is its last step's output."""
        output: Any = None
        name = start
        while name:
            step = self._graph.steps[name]
            # A step with a next one: its end is stored with the next start.
            output = await self._step(step, prefix, defer_end=bool(step.next))
            name = step.next
        return output

    async def _step(self, step: Step, prefix: str, defer_end: bool) -> Any:
        action = step.action
        key = prefix + step.name
        if isinstance(action, ParallelStep | ConditionStep | LoopStep):
            output = await self._composite(step, action, key, prefix, defer_end)
        else:
            output = await self._leaf(step, key, defer_end)
        self._outputs[step.name] = output
        return output

    # -- composite steps: they hold no side effect of their own ------------------------

    async def _composite(
        self,
        step: Step,
        action: ParallelStep | ConditionStep | LoopStep,
        key: str,
        prefix: str,
        defer_end: bool,
    ) -> Any:
        attempts = self._history.get(key, [])
        last = attempts[-1] if attempts else None
        if last is not None and last.state is StepState.COMPLETED:
            return last.output
        if last is not None and last.state is StepState.FAILED:
            raise StepFailed(last.error)
        if last is not None and last.state is StepState.RUNNING:
            current = last  # interrupted: its children's records say how far it got
        else:
            current = await self._start(
                step, key, (last.attempt + 1) if last else 1, _composite_input(action)
            )
        try:
            if step.timeout is None:
                output = await self._inside(step, action, key, prefix)
            else:
                # Earlier attempts were interrupted (a suspend, a shutdown):
                # the deadline counts from the first one's start.
                first = attempts[0] if attempts else current
                deadline = first.start_time + step.timeout
                output = await self._inside_until(step, action, key, prefix, deadline)
        except StepFailed as failed:
            await self._end(current, StepState.FAILED, error=str(failed))
            raise
        await self._end(current, StepState.COMPLETED, output=output, defer=defer_end)
        return output

    async def _inside(
        self, step: Step, action: ParallelStep | ConditionStep | LoopStep, key: str, prefix: str
    ) -> Any:
        """Runs what a composite step holds; its value is the step's output."""
        if isinstance(action, ParallelStep):
            return await self._parallel(action, key, prefix)
        if isinstance(action, ConditionStep):
            return await self._condition(action, prefix)
        return await self._loop(step, action, key)

    async def _inside_until(
        self,
        step: Step,
        action: ParallelStep | ConditionStep | LoopStep,
        key: str,
        prefix: str,
        deadline: datetime,
    ) -> Any:
        """`_inside`, stopped at `deadline`: then the steps still running
        inside are cancelled and the composite step fails."""
        assert step.timeout is not None
        error = (
            f"step {step.name!r} timed out: the steps inside it took longer than "
            f"{_seconds(step.timeout)} s (its timeout)"
        )

        async def body() -> Any:
            _DEADLINES.set((*_DEADLINES.get(), deadline))
            return await self._inside(step, action, key, prefix)

        remaining = (deadline - utcnow()).total_seconds()
        if remaining > 0:
            task = asyncio.create_task(body(), name=f"step-{key}")
            try:
                done, _ = await asyncio.wait({task}, timeout=remaining)
            except asyncio.CancelledError:
                await _cancel_and_wait(task)
                raise
            if done:
                return task.result()
            self._stop_reasons[key] = f"cancelled: step {step.name!r} timed out"
            try:
                stopped = await _cancel_and_wait(task)
            finally:
                self._stop_reasons.pop(key, None)
            # Stopping it may have failed for another reason (fencing).
            if stopped is not None and not isinstance(stopped, StepFailed | Parked):
                raise stopped
        await self._cancel_inside(step, key, prefix, f"cancelled: step {step.name!r} timed out")
        raise StepFailed(error)

    async def _cancel_inside(self, step: Step, key: str, prefix: str, error: str) -> None:
        """Ends the running or waiting attempts of the steps a composite
        step holds (in its current iteration of a loop around it) as
        CANCELLED."""
        names: set[str] = set()
        for sub in self._graph.sub_chains(step):
            names |= self._reachable(sub)
        # A loop's own steps are keyed `<loop key>[<iteration>]/<name>`.
        key_prefix = f"{key}[" if isinstance(step.action, LoopStep) else prefix
        await self._cancel_open(names, key_prefix, error)

    async def _parallel(self, action: ParallelStep, key: str, prefix: str) -> Any:
        tasks = {
            branch: asyncio.create_task(self._chain(branch, prefix), name=f"branch-{branch}")
            for branch in action.branches
        }
        results: dict[str, Any] = {}
        parked: Parked | None = None
        parked_branches: list[str] = []
        failures: list[str] = []
        pending = set(tasks.values())
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    branch = next(b for b, t in tasks.items() if t is task)
                    error = task.exception()
                    if error is None:
                        results[branch] = task.result()
                    elif isinstance(error, Parked):
                        parked = error
                        parked_branches.append(branch)
                    elif isinstance(error, StepFailed):
                        failures.append(str(error))
                    else:
                        raise error
                if action.join is ParallelJoin.ANY and results:
                    break
                if action.join is ParallelJoin.ALL and failures:
                    break
        finally:
            # A branch waiting for approval is stopped too once the step is
            # decided without it (another branch won, or one failed).
            decided = bool(failures) or (action.join is ParallelJoin.ANY and bool(results))
            await self._stop_branches(
                tasks,
                prefix,
                self._stop_reasons.pop(key, STOPPED_BRANCH),
                parked_branches if decided else [],
            )
        if action.join is ParallelJoin.ANY and results:
            return results
        if failures:
            raise StepFailed(failures[0])
        if parked is not None:
            raise parked
        return results

    async def _stop_branches(
        self,
        tasks: dict[str, asyncio.Task[Any]],
        prefix: str,
        reason: str,
        parked: Sequence[str] = (),
    ) -> None:
        """Cancels the branches still running and ends their open attempts,
        and those of the `parked` ones (CANCELLED, with `reason` as their
        error)."""
        running = [b for b, t in tasks.items() if not t.done()]
        for branch in running:
            tasks[branch].cancel()
        if not running and not parked:
            return
        await asyncio.gather(*(tasks[b] for b in running), return_exceptions=True)
        names: set[str] = set()
        for branch in [*running, *parked]:
            names |= self._reachable(branch)
        await self._cancel_open(names, prefix, reason)

    async def _cancel_open(self, names: set[str], key_prefix: str, error: str) -> None:
        """Stores the deferred ends, then ends the open attempts of `names`
        under `key_prefix` as CANCELLED with `error`."""
        await self._flush()
        await self._repo.cancel_open_steps(
            self._owner,
            self._generation,
            self._execution.id,
            names,
            key_prefix,
            error,
            utcnow(),
        )

    def _reachable(self, start: str) -> set[str]:
        names: set[str] = set()
        for step in self._graph.chain(start):
            names.add(step.name)
            for sub in self._graph.sub_chains(step):
                names |= self._reachable(sub)
        return names

    async def _condition(self, action: ConditionStep, prefix: str) -> Any:
        result = self._test(action.expression)
        arm = action.then_step if result else action.else_step
        output = await self._chain(arm, prefix) if arm else None
        return {"result": result, "branch": arm, "output": output}

    async def _loop(self, step: Step, action: LoopStep, key: str) -> Any:
        output: Any = None
        met = False
        iteration = 0
        for iteration in range(1, action.iteration_limit + 1):
            output = await self._chain(action.body, f"{key}[{iteration}]/")
            if action.until and self._test(action.until):
                met = True
                break
        return {"iterations": iteration, "until_met": met, "output": output}

    def _test(self, expression: str) -> bool:
        try:
            return compile_expression(expression).test(self._context())
        except ExpressionError as err:
            raise StepFailed(str(err)) from None

    # -- leaf steps: agent, tool, wait, approval ----------------------------------

    async def _leaf(self, step: Step, key: str, defer_end: bool) -> Any:
        attempts = self._history.get(key, [])
        last = attempts[-1] if attempts else None
        failures = sum(1 for a in attempts if a.state is StepState.FAILED)
        if last is not None:
            if last.state is StepState.COMPLETED:
                return last.output
            if last.state is StepState.WAITING:
                if isinstance(step.action, ApprovalStep):
                    await self._check_approval_deadline(step, last)
                    raise Parked(step.name)
                return await self._wait_until(last)
            if last.state is StepState.RUNNING:
                await self._end(last, StepState.CANCELLED, error=INTERRUPTED)
                if last.run_id:
                    # The interrupted attempt's run may have been rescued: stop it.
                    self._deps.agents.cancel_run(self._tenant, last.run_id)
            if last.state is StepState.FAILED:
                if failures >= max(1, step.retry.max_attempts) or isinstance(
                    step.action, ApprovalStep
                ):
                    raise StepFailed(last.error)
                if last.wake_time is not None:
                    await _sleep_until(last.wake_time)
        attempt = (last.attempt + 1) if last else 1
        while True:
            try:
                return await self._attempt(step, key, attempt, defer_end)
            except StepError as err:
                failures += 1
                error = str(err)
            current = self._history[key][-1]
            if failures >= max(1, step.retry.max_attempts):
                await self._end(current, StepState.FAILED, error=error)
                raise StepFailed(f"step {step.name!r} failed after {attempt} attempts: {error}")
            backoff = step.retry.backoff(attempt + 1)
            await self._end(
                current,
                StepState.FAILED,
                error=error,
                wake_time=utcnow() + backoff,
                extra=[ev.step_retrying(step.name, attempt + 1, backoff, error)],
            )
            await asyncio.sleep(backoff.total_seconds())
            attempt += 1

    async def _attempt(self, step: Step, key: str, attempt: int, defer_end: bool) -> Any:
        action = step.action
        context = self._context()
        if isinstance(action, ApprovalStep):
            # The deadline, if any: its own, or a composite step's around it.
            now = utcnow()
            deadlines = list(_DEADLINES.get())
            if step.timeout is not None:
                deadlines.append(now + step.timeout)
            await self._start(
                step,
                key,
                attempt,
                {"prompt": action.prompt},
                StepState.WAITING,
                wake_time=min(deadlines, default=None),
                start_time=now,
            )
            raise Parked(step.name)
        if isinstance(action, WaitStep):
            wake = utcnow() + action.duration
            record = await self._start(
                step,
                key,
                attempt,
                {"seconds": action.duration.total_seconds()},
                StepState.WAITING,
                wake_time=wake,
            )
            return await self._wait_until(record)
        try:
            if isinstance(action, AgentStep):
                value: Any = render_text(action.input, context)
            elif isinstance(action, ToolStep):
                value = render_value(action.arguments, context)
            else:
                raise StepError(f"step {step.name!r} has no action")
        except ExpressionError as err:
            await self._start(step, key, attempt, None)
            raise StepError(str(err)) from None
        record = await self._start(step, key, attempt, value)
        timeout = step.timeout.total_seconds() if step.timeout else None
        try:
            async with asyncio.timeout(timeout):
                if isinstance(action, AgentStep):
                    output = await self._agent(record, action.agent_id, str(value))
                else:
                    assert isinstance(action, ToolStep)
                    idempotency_key = tool_idempotency_key(self._execution.id, key, attempt)
                    output = await call_tool(
                        self._deps.tools,
                        self._tenant,
                        action.tool_id,
                        value,
                        idempotency_key,
                        {
                            "workflow_id": self._execution.workflow_id,
                            "execution_id": self._execution.id,
                            "step": key,
                        },
                    )
        except TimeoutError:
            raise StepError(f"the attempt took longer than {timeout:g} s (timeout)") from None
        await self._end(record, StepState.COMPLETED, output=output, defer=defer_end)
        return output

    async def _agent(self, record: StepAttempt, agent_id: str, message: str) -> str:
        async def started(run_id: str) -> None:
            record.run_id = run_id
            await self._flush()
            await self._repo.update_step(
                self._owner,
                self._generation,
                self._tenant,
                self._execution.id,
                record.key,
                record.attempt,
                run_id=run_id,
            )

        async def forward(event: RunEvent) -> None:
            await self._deps.streams.append(
                self._tenant,
                f"execution:{self._execution.id}",
                *ev.agent_event(record.step_name, record.attempt, event),
            )

        return await self._deps.agents.run(self._tenant, agent_id, message, started, forward)

    async def _check_approval_deadline(self, step: Step, record: StepAttempt) -> None:
        """Fails the waiting approval if its own timeout has passed (the
        worker woke the execution for it)."""
        if step.timeout is None or utcnow() < record.start_time + step.timeout:
            return
        error = f"approval not given within {_seconds(step.timeout)} s (its timeout)"
        await self._end(record, StepState.FAILED, error=error)
        raise StepFailed(f"step {step.name!r} failed: {error}")

    async def _wait_until(self, record: StepAttempt) -> Any:
        assert record.wake_time is not None
        await _sleep_until(record.wake_time)
        output = {"waited_s": (record.wake_time - record.start_time).total_seconds()}
        await self._end(record, StepState.COMPLETED, output=output)
        return output

    # -- records -----------------------------------------------------------------

    async def _start(
        self,
        step: Step,
        key: str,
        attempt: int,
        value: Any,
        state: StepState = StepState.RUNNING,
        wake_time: datetime | None = None,
        start_time: datetime | None = None,
    ) -> StepAttempt:
        record = StepAttempt(
            execution_id=self._execution.id,
            key=key,
            step_name=step.name,
            kind=step.kind.value if step.kind else "",
            attempt=attempt,
            state=state,
            start_time=start_time or utcnow(),
            input=value,
            wake_time=wake_time,
        )

        async def write(pending: list[tuple[StepEnd, list[NewEvent]]]) -> list[StreamEvent]:
            return await self._repo.add_step(
                self._owner,
                self._generation,
                self._tenant,
                record,
                [
                    *(event for _, events in pending for event in events),
                    ev.step_started(step.name, attempt, value),
                ],
                ends=[end for end, _ in pending],
            )

        await self._with_deferred(write)
        self._history.setdefault(key, []).append(record)
        return record

    async def _end(
        self,
        record: StepAttempt,
        state: StepState,
        *,
        output: Any = None,
        error: str = "",
        wake_time: datetime | None = None,
        extra: list[NewEvent] | None = None,
        defer: bool = False,
    ) -> None:
        """Ends an attempt: now, or (`defer`, for a completed attempt the
        chain goes on from) in the transaction of the next write."""
        events: list[NewEvent] = []
        if state is StepState.COMPLETED:
            events.append(ev.step_completed(record.step_name, record.attempt, output))
        elif state is StepState.FAILED:
            events.append(ev.step_failed(record.step_name, record.attempt, error))
        events.extend(extra or [])
        # A wait's wake-up time stays in its history once it has passed.
        wake_time = wake_time or record.wake_time
        now = utcnow()
        values = {
            "state": state.value,
            "output": output,
            "error": error,
            "end_time": now,
            "wake_time": wake_time,
        }
        record.state, record.output, record.error, record.end_time = state, output, error, now
        record.wake_time = wake_time
        self._deferred.append(((record.key, record.attempt, values), events))
        if not defer:
            await self._flush()


def _composite_input(action: ParallelStep | ConditionStep | LoopStep) -> dict[str, Any]:
    if isinstance(action, ParallelStep):
        return {"branches": list(action.branches), "join": action.join.value}
    if isinstance(action, ConditionStep):
        return {"expression": action.expression}
    return {"body": action.body, "until": action.until, "max_iterations": action.iteration_limit}


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}"


async def _cancel_and_wait(task: asyncio.Task[Any]) -> BaseException | None:
    """Cancels `task` and waits until it has stopped (its clean-up writes
    done), even if this task is cancelled meanwhile: then CancelledError is
    raised once it has. Returns the exception it ended with, other than its
    cancellation (None if it was cancelled or returned)."""
    task.cancel()
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    error = None if task.cancelled() else task.exception()
    if cancelled:
        raise asyncio.CancelledError
    return error


async def _sleep_until(when: datetime) -> None:
    delay = (when - utcnow()).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)
