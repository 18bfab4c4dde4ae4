"""Executes runs: the model/tool loop, streaming each step as events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog

from aster.server.agents.models import Agent, AgentState
from aster.server.agents.service import AgentService
from aster.server.bus.base import EventBus
from aster.server.clock import utcnow
from aster.server.errors import AsterError, FailedPrecondition, InvalidArgument, ResourceExhausted
from aster.server.ids import new_id
from aster.server.limits.usage import TokenUsage
from aster.server.observability import aster_metrics
from aster.server.pools.context import SessionContext
from aster.server.pools.live import LiveAgent
from aster.server.pools.pool import AgentPool
from aster.server.providers.base import (
    ChatMessage,
    Delta,
    Finish,
    ModelRequest,
    Role,
    TextDelta,
    ToolCallDelta,
    ToolCallRequest,
    ToolSpec,
    UsageDelta,
)
from aster.server.runs.dependencies import ProviderSource, ToolRunner
from aster.server.runs.event_log import EventLog
from aster.server.runs.limits import LeaseSettings, RunLimits
from aster.server.runs.models import Run, RunEvent, RunStatus
from aster.server.sessions.models import Checkpoint, Message, ToolCallRecord
from aster.server.storage.run_repository import RunRepository
from aster.server.storage.session_repository import RunAttemptStale, SessionRepository
from aster.server.tools.call_context import ToolCallContext, tool_call_scope
from aster.server.worker_loops import cancel_task, listen_for_stops, repeat

_log = structlog.get_logger("aster.runs")
CONTROL_TOPIC = "control"


@dataclass
class _Emitter:
    """Numbers a run's events 1, 2, 3 ... and appends them to the log."""

    run: Run
    log: EventLog
    seq: int = 0
    pending: list[asyncio.Future[None]] = field(default_factory=list)

    def next_event(self, kind: str, **data: Any) -> RunEvent:
        """The run's next event, numbered but not yet appended."""
        self.seq += 1
        return RunEvent(
            run_id=self.run.id,
            session_id=self.run.session_id,
            seq=self.seq,
            attempt=self.run.attempt,
            kind=kind,
            data=data,
            create_time=utcnow(),
        )

    def emit(self, kind: str, **data: Any) -> asyncio.Future[None]:
        done = self.log.append(self.next_event(kind, **data))
        self.pending.append(done)
        if len(self.pending) > 256:
            self.pending = [f for f in self.pending if not f.done()]
        return done

    async def flush(self) -> bool:
        """Waits until every emitted event is stored; False if some could
        not be (the database failed for longer than the log retries)."""
        pending, self.pending = self.pending, []
        results = await asyncio.gather(*pending, return_exceptions=True)
        return not any(isinstance(r, BaseException) for r in results)


@dataclass
class _Outcome:
    status: RunStatus = RunStatus.COMPLETED
    error_code: str = ""
    error: str = ""
    result: Message | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    first_token_ms: float | None = None


class RunExecutor:
    """Runs in this process, as tasks; cancels them on request from any replica."""

    def __init__(
        self,
        runs: RunRepository,
        sessions: SessionRepository,
        agents: AgentService,
        log: EventLog,
        bus: EventBus,
        providers: ProviderSource,
        tools: ToolRunner,
        limits: RunLimits,
        lease: LeaseSettings | None = None,
        *,
        pool: AgentPool,
    ) -> None:
        self.owner = new_id("wrk")
        self._lease = lease or LeaseSettings()
        self._runs = runs
        self._sessions = sessions
        self._agents = agents
        self._log = log
        self._bus = bus
        self._providers = providers
        self._tools = tools
        self._limits = limits
        self._pool = pool
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Runs this worker is executing (it holds their lease): their attempt.
        self._executing: dict[str, int] = {}
        # Runs this worker lost to another attempt: they end without a trace.
        self._fenced: set[str] = set()
        self._shutting_down = False
        self._loops: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        # Called before each model call; what they return follows the
        # instructions in the context (semantic memory's auto-recall).
        self.context_hooks: list[Callable[[Run, Agent], Awaitable[Sequence[ChatMessage]]]] = []
        # Charged with each finished run's tokens (the daily token quota).
        self.token_usage: TokenUsage | None = None

    async def start(self) -> None:
        """Starts the worker: cancellations from other replicas, the queue
        poller, lease renewal, the rescue of lapsed leases and the queue's
        gauges."""
        self._loops = [
            asyncio.create_task(
                listen_for_stops(
                    self._bus, CONTROL_TOPIC, "cancel", self.cancel_local, self._listening
                ),
                name="run-control",
            ),
            asyncio.create_task(self._every(self._lease.poll_s, self._poll), name="run-poll"),
            asyncio.create_task(
                self._every(self._lease.lease_s / 3, self._renew), name="run-leases"
            ),
            asyncio.create_task(
                self._every(self._lease.lease_s / 2, self._rescue), name="run-rescue"
            ),
            asyncio.create_task(
                self._every(aster_metrics.QUEUE_REFRESH_S, self._report_queue),
                name="run-queue-metrics",
            ),
        ]
        async with asyncio.timeout(10):
            await self._listening.wait()

    async def _every(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        await repeat(interval_s, work, log=_log, what="run worker")

    async def _poll(self) -> None:
        """Takes queued runs nobody is executing (rescued ones, or runs
        whose predecessor ended elsewhere)."""
        if self._shutting_down:
            return
        room = self._lease.max_runs - len(self._tasks)
        if room <= 0 or self._shutting_down:
            return
        for run in await self._runs.claim(self.owner, utcnow(), self._lease.lease_s, room):
            self._spawn(run, self._started(run), leased=True)

    async def _renew(self) -> None:
        """Extends this worker's leases; a run whose lease was lost (this
        worker stalled past it) is stopped without writing anything more."""
        executing = dict(self._executing)
        held = await self._runs.renew(self.owner, list(executing), utcnow(), self._lease.lease_s)
        for run_id in set(executing) - held:
            current = await self._runs.get_any(run_id)
            if (
                current is not None
                and current.lease_owner == self.owner
                and current.attempt == executing[run_id]
            ):
                continue  # finishing
            _log.warning("lease lost; stopping the run here", run_id=run_id)
            self._fenced.add(run_id)
            self.cancel_local(run_id)

    async def _rescue(self) -> None:
        """Re-queues runs whose worker stopped renewing their lease."""
        rescued, given_up = await self._runs.rescue(utcnow(), self.owner, self._lease.max_attempts)
        for last in given_up:
            _log.error("gave up on a run that lost its worker every time", run_id=last.run_id)
            await self._log.publish(last)
        if rescued:
            _log.warning("rescued runs whose lease lapsed", runs=rescued)
            await self._poll()

    async def _report_queue(self) -> None:
        """Sets the run-queue gauges from the database (the same numbers on
        every replica). A failure (the database is down) is logged by the
        loop, and the gauges keep their last values until the next read."""
        now = utcnow()
        stats = await self._runs.queue_stats(now)
        oldest = stats.oldest_ready
        aster_metrics.RUN_QUEUE_DEPTH.set(stats.queued)
        aster_metrics.RUN_QUEUE_OLDEST_AGE.set(
            max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        )
        aster_metrics.RUNS_LEASE_EXPIRED.set(stats.lease_expired)

    def dispatch(self, run: Run) -> None:
        """Executes `run` here, after its predecessor, if this worker gets
        its lease first."""
        self._spawn(run, self._execute(run))

    def _spawn(self, run: Run, work: Coroutine[Any, Any, None], *, leased: bool = False) -> None:
        """Runs `work` as the run's task. Work on a run this worker already
        leased (found by the poller) takes over from a dispatch task of the
        same run still trying to lease it: that one finds the run taken and
        ends quietly."""
        if run.id in self._tasks and not leased:
            work.close()
            return
        if leased and run.id in self._executing:
            # This worker lost the run and took it back: stop the old attempt.
            self._fenced.add(run.id)
            self.cancel_local(run.id)
        task = asyncio.create_task(work, name=f"run-{run.id}")
        self._tasks[run.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(run.id) is finished:
                del self._tasks[run.id]
                self._fenced.discard(run.id)

        task.add_done_callback(done)

    def cancel_local(self, run_id: str) -> bool:
        """Cancels the run if this process executes it (once: a second
        cancel must not interrupt the run's finishing steps)."""
        return cancel_task(self._tasks, run_id)

    async def cancel_everywhere(self, run_id: str) -> None:
        """Cancels the run on whichever replica executes or waits for it."""
        self.cancel_local(run_id)
        await self._bus.publish(CONTROL_TOPIC, {"cancel": run_id})

    async def close(self, grace_s: float) -> None:
        """Lets running runs finish for `grace_s`, then cancels them:
        foreground runs end CANCELLED, background runs stay RUNNING so that
        the next start queues them again."""
        self._shutting_down = True
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
        for loop in self._loops:
            loop.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def _wait_for(self, predecessor_id: str, session_id: str) -> None:
        predecessor = await self._runs.get_any(predecessor_id)
        if predecessor is None or predecessor.status.terminal:
            return

        async def finished() -> bool:
            current = await self._runs.get_any(predecessor_id)
            return current is None or current.status.terminal

        async for event in self._log.follow(predecessor_id, session_id, 0, finished):
            if event.terminal:
                return

    async def _execute(self, run: Run) -> None:
        try:
            if run.after_run_id:
                await self._wait_for(run.after_run_id, run.session_id)
            leased = await self._runs.lease(run.id, self.owner, utcnow(), self._lease.lease_s)
        except asyncio.CancelledError:
            if self._shutting_down:
                return  # stays queued for the other workers (or the next start)
            # Cancelled before it started: a run still queued, or leased by
            # this worker in the same instant, ends here; one started
            # elsewhere is cancelled there.
            await asyncio.shield(self.cancel_unstarted(run))
            return
        if leased is None:
            return  # cancelled while queued, or taken by another worker
        await self._started(leased)

    async def cancel_unstarted(self, run: Run) -> bool:
        """Ends a run nobody executes yet (QUEUED, or leased here but not
        started) as CANCELLED, with its last event; False otherwise."""
        if not await self._runs.cancel_unstarted(run.id, self.owner, utcnow()):
            return False
        current = await self._runs.get_any(run.id)
        emitter = _Emitter(current or run, self._log, seq=current.last_seq if current else 0)
        last = emitter.next_event("run_finished", status=RunStatus.CANCELLED.value, result=None)
        await self._runs.append_final_event(last)
        await self._log.publish(last)
        return True

    def stop_taking_runs(self) -> None:
        """Shutdown begins: no more runs are polled for, and queued runs
        this worker waits on stay queued for others."""
        self._shutting_down = True

    async def _started(self, run: Run) -> None:
        """Executes a run this worker leased (from its last stored event on,
        if it is a later attempt)."""
        self._executing[run.id] = run.attempt
        try:
            await self._execute_leased(run)
        finally:
            if self._executing.get(run.id) == run.attempt:
                del self._executing[run.id]

    async def _execute_leased(self, run: Run) -> None:
        emitter = _Emitter(run, self._log, seq=run.last_seq)
        outcome = _Outcome()
        started = time.monotonic()
        try:
            if run.attempt > 1:
                emitter.emit("run_retry", attempt=run.attempt)
            emitter.emit("run_started", agent_id=run.agent_id)
            async with asyncio.timeout(self._limits.timeout_s):
                await self._loop(run, emitter, outcome, started)
        except RunAttemptStale:
            return  # another attempt owns the run now
        except asyncio.CancelledError:
            if run.id in self._fenced:
                return  # another attempt owns the run now
            if self._shutting_down and run.background:
                await emitter.flush()
                return  # left RUNNING: its lease lapses and another worker resumes it
            outcome.status, outcome.error_code = RunStatus.CANCELLED, "CANCELLED"
            outcome.error = (
                "the server shut down" if self._shutting_down else "the run was cancelled"
            )
        except TimeoutError:
            outcome.status, outcome.error_code = RunStatus.FAILED, "DEADLINE_EXCEEDED"
            outcome.error = f"the run took longer than {self._limits.timeout_s:g} s"
        except AsterError as err:
            outcome.status, outcome.error_code, outcome.error = (
                RunStatus.FAILED,
                err.code,
                err.message,
            )
        except Exception as err:
            _log.error("run failed", run_id=run.id, exc_info=err)
            outcome.status, outcome.error_code = RunStatus.FAILED, "INTERNAL"
            outcome.error = "internal error; the server log has the details"
        await asyncio.shield(self._finish(run, emitter, outcome))

    async def _loop(self, run: Run, emitter: _Emitter, outcome: _Outcome, started: float) -> None:
        # The agent's live instance (resolved configuration, warm provider,
        # cached session context) from the pool: a hit, a cold start, or
        # RESOURCE_EXHAUSTED after the admission timeout if the pool is full.
        async with self._pool.acquire(run.tenant, run.agent_id) as live:
            await self._steps(run, live, emitter, outcome, started)

    async def _steps(
        self, run: Run, live: LiveAgent, emitter: _Emitter, outcome: _Outcome, started: float
    ) -> None:
        agent = live.agent
        if agent.spec.state is AgentState.DISABLED:
            raise FailedPrecondition(f"agent {agent.id!r} is disabled", field="agent_id")
        if run.input_message_id:
            # A later attempt: back to the last checkpoint plus the user's message.
            await self._sessions.forget_run(
                run.tenant, run.session_id, run.id, run.input_message_id
            )
            live.forget(run.session_id)
            context = await live.context(run.session_id)
        else:
            # Checked against the database before this run writes to it, so
            # a warm context costs one aggregate query.
            context = await live.context(run.session_id)
            user = await self._sessions.append_message(
                run.tenant,
                Message(
                    id=new_id("msg"),
                    session_id=run.session_id,
                    role="user",
                    content=run.input_text,
                    create_time=utcnow(),
                    run_id=run.id,
                ),
                attempt=run.attempt,
            )
            context.add(user)
            await self._runs.update(run.id, input_message_id=user.id)
        tools: Sequence[ToolSpec] = ()
        tool_ids: dict[str, str] = {}
        if agent.spec.tools:
            tools, tool_ids = await self._tools.callable_tools(run.tenant, agent.spec.tools)
        provider = live.provider
        for _step in range(self._limits.max_steps):
            history = await self._history(run, agent, context)
            request = ModelRequest(config=agent.spec.model, messages=history, tools=tuple(tools))
            async with contextlib.aclosing(provider.stream(request)) as stream:
                text, calls = await self._model_call(stream, emitter, outcome, started)
            emitter.emit(
                "usage", input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens
            )
            if outcome.input_tokens + outcome.output_tokens > self._limits.max_tokens:
                raise ResourceExhausted(
                    f"the run used more than {self._limits.max_tokens} tokens "
                    "(ASTER_RUN_MAX_TOKENS)"
                )
            message = await self._sessions.append_message(
                run.tenant,
                Message(
                    id=text[0] or new_id("msg"),
                    session_id=run.session_id,
                    role="assistant",
                    content=text[1],
                    create_time=utcnow(),
                    tool_calls=[
                        ToolCallRecord(c.id, c.name, _parse_arguments(c.arguments)) for c in calls
                    ],
                    run_id=run.id,
                ),
                attempt=run.attempt,
            )
            context.add(message)
            if not calls:
                outcome.result = message
                return
            for call in calls:
                context.add(await self._call_tool(run, call, tool_ids, emitter, message.id))
        raise ResourceExhausted(
            f"stopped after {self._limits.max_steps} model calls without a final answer (max_steps)"
        )

    async def _history(
        self, run: Run, agent: Agent, context: SessionContext
    ) -> tuple[ChatMessage, ...]:
        messages = context.messages
        history: list[ChatMessage] = []
        if agent.spec.instructions:
            history.append(ChatMessage(role="system", content=agent.spec.instructions))
        for hook in self.context_hooks:
            history.extend(await hook(run, agent))
        for m in messages:
            history.append(
                ChatMessage(
                    role=cast(Role, m.role),
                    content=m.content,
                    tool_calls=tuple(
                        ToolCallRequest(c.id, c.tool_id, json.dumps(c.arguments))
                        for c in m.tool_calls
                    ),
                    tool_call_id=m.tool_call_id,
                )
            )
        return tuple(history)

    async def _model_call(
        self,
        stream: AsyncGenerator[Delta, None],
        emitter: _Emitter,
        outcome: _Outcome,
        started: float,
    ) -> tuple[tuple[str, str], list[ToolCallRequest]]:
        """Streams one model reply as events; returns (message id, text) and
        the complete tool calls."""
        message_id = ""
        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        call_input = call_output = 0
        try:
            async for delta in stream:
                if isinstance(delta, TextDelta):
                    if not delta.text:
                        continue
                    if not message_id:
                        message_id = new_id("msg")
                        emitter.emit("text_message_start", message_id=message_id)
                    if outcome.first_token_ms is None:
                        outcome.first_token_ms = (time.monotonic() - started) * 1000
                    parts.append(delta.text)
                    emitter.emit("text_delta", message_id=message_id, delta=delta.text)
                elif isinstance(delta, ToolCallDelta):
                    call = calls.get(delta.index)
                    if call is None:
                        call = {"id": delta.id or new_id("call"), "name": delta.name, "args": ""}
                        calls[delta.index] = call
                        emitter.emit(
                            "tool_call_start", tool_call_id=call["id"], tool_id=call["name"]
                        )
                    if delta.arguments:
                        call["args"] += delta.arguments
                        emitter.emit(
                            "tool_call_args_delta", tool_call_id=call["id"], delta=delta.arguments
                        )
                elif isinstance(delta, UsageDelta):
                    call_input, call_output = delta.input_tokens, delta.output_tokens
                elif isinstance(delta, Finish):
                    break
        finally:
            outcome.input_tokens += call_input
            outcome.output_tokens += call_output
        if message_id:
            emitter.emit("text_message_end", message_id=message_id)
        requests = [
            ToolCallRequest(c["id"], c["name"], c["args"]) for _, c in sorted(calls.items())
        ]
        for request in requests:
            emitter.emit("tool_call_end", tool_call_id=request.id)
        return (message_id, "".join(parts)), requests

    async def _call_tool(
        self,
        run: Run,
        call: ToolCallRequest,
        tool_ids: dict[str, str],
        emitter: _Emitter,
        message_id: str = "",
    ) -> Message:
        """Runs one tool call asked for by assistant message `message_id`;
        returns the stored tool message."""
        output: Any = None
        error = ""
        try:
            arguments = json.loads(call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            error = f"the arguments are not a JSON object: {err}"
        else:
            try:
                if call.name not in tool_ids:
                    raise InvalidArgument(f"the model called {call.name!r}, which the agent lacks")
                caller = ToolCallContext(
                    tenant=run.tenant,
                    agent_id=run.agent_id,
                    session_id=run.session_id,
                    run_id=run.id,
                    tool_call_id=call.id,
                    message_id=message_id,
                )
                with tool_call_scope(caller):
                    result = await self._tools.execute(
                        run.tenant,
                        tool_ids[call.name],
                        arguments,
                        f"{run.id}:{call.id}:{run.attempt}",
                    )
                output, error = result.output, result.error
            except AsterError as err:
                error = err.message
        aster_metrics.TOOL_CALLS.labels(outcome="error" if error else "ok").inc()
        emitter.emit("tool_result", tool_call_id=call.id, output=output, error=error)
        content = json.dumps({"error": error} if error else output)
        return await self._sessions.append_message(
            run.tenant,
            Message(
                id=new_id("msg"),
                session_id=run.session_id,
                role="tool",
                content=content,
                create_time=utcnow(),
                tool_call_id=call.id,
                run_id=run.id,
            ),
            attempt=run.attempt,
        )

    async def _finish(self, run: Run, emitter: _Emitter, outcome: _Outcome) -> None:
        if outcome.error:
            emitter.emit("error", code=outcome.error_code, message=outcome.error)
        if not await emitter.flush():
            # Events are missing from the stream: the run cannot count as done.
            outcome.status, outcome.error_code = RunStatus.FAILED, "UNAVAILABLE"
            outcome.error = "some of the run's events could not be stored"
            outcome.result = None
        result = outcome.result
        last = emitter.next_event(
            "run_finished",
            status=outcome.status.value,
            result=_message_data(result) if result else None,
        )
        now = utcnow()
        checkpoint = None
        if outcome.status is RunStatus.COMPLETED and result is not None:
            checkpoint = await self._checkpoint(run, result)
        stored = await self._runs.finish(
            run.id,
            last,
            checkpoint,
            status=outcome.status.value,
            end_time=now,
            error=outcome.error,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            first_token_ms=outcome.first_token_ms,
            result_message_id=result.id if result else "",
            result_text=result.content if result else "",
        )
        if not stored:
            _log.warning("lease lost before the run ended; nothing written", run_id=run.id)
            return
        await self._log.publish(last)
        if self.token_usage is not None:
            await self.token_usage.add(run.tenant, outcome.input_tokens + outcome.output_tokens)
        _record_metrics(outcome)
        _log.info("run finished", run_id=run.id, status=outcome.status.value, events=emitter.seq)

    async def _checkpoint(self, run: Run, last: Message) -> Checkpoint:
        """The session's checkpoint after this run (stored with its end)."""
        turn, count = await self._sessions.next_turn(run.tenant, run.session_id)
        return Checkpoint(
            id=new_id("ckp"),
            session_id=run.session_id,
            run_id=run.id,
            turn=turn,
            message_count=count,
            last_position=last.position,
            last_message_id=last.id,
            state={},
            create_time=utcnow(),
        )


def _record_metrics(outcome: _Outcome) -> None:
    aster_metrics.RUNS.labels(status=outcome.status.value).inc()
    aster_metrics.TOKENS.labels(direction="input").inc(outcome.input_tokens)
    aster_metrics.TOKENS.labels(direction="output").inc(outcome.output_tokens)
    if outcome.first_token_ms is not None:
        aster_metrics.TIME_TO_FIRST_TOKEN.observe(outcome.first_token_ms / 1000)


def _parse_arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": value}


def _message_data(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "run_id": message.run_id,
        "create_time": message.create_time.isoformat(),
    }
