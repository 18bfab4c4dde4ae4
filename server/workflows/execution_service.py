"""The rules of workflow executions: starting one (idempotently, pinned to
the workflow's current version), inspecting, controlling and watching."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, Protocol

from aster.server.bus.base import EventBus
from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition, InvalidArgument
from aster.server.ids import check_id, new_id
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.runs.dependencies import ToolRunner
from aster.server.runs.limits import LeaseSettings
from aster.server.runs.service import RunService
from aster.server.storage.database import Database
from aster.server.storage.execution_repository import ExecutionRepository, stream_of
from aster.server.streams.log import StreamLog
from aster.server.streams.models import StreamEvent
from aster.server.workflows import execution_events as ev
from aster.server.workflows.codec import step_from_json, step_to_json
from aster.server.workflows.engine import EngineDependencies
from aster.server.workflows.execution_models import (
    TERMINAL_STATES,
    Execution,
    ExecutionState,
    StepAttempt,
    StepState,
)
from aster.server.workflows.execution_worker import ExecutionWorker
from aster.server.workflows.graph import WorkflowGraph, build_graph
from aster.server.workflows.models import StepKind, Workflow
from aster.server.workflows.step_actions import AgentStepRunner

ID_PREFIX = "exe"
MAX_IDEMPOTENCY_KEY = 200
_ALL = frozenset(ExecutionState)
_LIVE = _ALL - TERMINAL_STATES
_SUSPENDABLE = frozenset(
    {ExecutionState.PENDING, ExecutionState.RUNNING, ExecutionState.WAITING_APPROVAL}
)


class WorkflowSource(Protocol):
    """Where executions get their workflow's current version."""

    async def get(self, tenant: str, workflow_id: str) -> Workflow:
        """The workflow at its current version, or NOT_FOUND."""
        ...


def graph_of(execution: Execution) -> WorkflowGraph:
    """The step graph of the version the execution pinned."""
    return build_graph([step_from_json(s) for s in execution.definition["steps"]])


def build_execution_service(
    database: Database,
    streams: StreamLog,
    bus: EventBus,
    tools: ToolRunner,
    runs: RunService,
    workflows: WorkflowSource,
    lease: LeaseSettings,
) -> ExecutionService:
    """The execution service and its worker, wired from the server's parts."""
    repository = ExecutionRepository(database)
    deps = EngineDependencies(repository, streams, tools, AgentStepRunner(runs))

    async def load_graph(execution: Execution) -> WorkflowGraph:
        return graph_of(execution)

    worker = ExecutionWorker(deps, bus, load_graph, lease)
    return ExecutionService(repository, workflows, streams, worker)


class ExecutionService:
    """Starts, lists, inspects, controls and follows executions."""

    def __init__(
        self,
        executions: ExecutionRepository,
        workflows: WorkflowSource,
        streams: StreamLog,
        worker: ExecutionWorker,
    ) -> None:
        self._repo = executions
        self._workflows = workflows
        self._streams = streams
        self._worker = worker

    async def execute(
        self,
        tenant: str,
        workflow_id: str,
        input: dict[str, Any],
        idempotency_key: str = "",
    ) -> Execution:
        """Starts an execution of the workflow's current version and returns
        it PENDING. The same `idempotency_key` for the same workflow returns
        the execution the first call started, whatever its input."""
        check_id(workflow_id, "workflow_id")
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not all(
            " " <= c <= "~" for c in idempotency_key
        ):
            raise InvalidArgument(
                f"idempotency_key must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
                field="idempotency_key",
            )
        workflow = await self._workflows.get(tenant, workflow_id)
        execution = Execution(
            id=new_id(ID_PREFIX),
            tenant=tenant,
            workflow_id=workflow.id,
            workflow_version=workflow.version,
            state=ExecutionState.PENDING,
            input=whole_numbers(input),
            create_time=utcnow(),
            definition={"steps": [step_to_json(s) for s in workflow.spec.steps]},
            idempotency_key=idempotency_key,
        )
        stored, events = await self._repo.create(
            execution, [ev.state_changed(ExecutionState.PENDING)]
        )
        if events:
            await self._streams.publish(events)
            self._worker.dispatch(stored.id)
        return await self._with_seq(stored)

    async def get(self, tenant: str, workflow_id: str, execution_id: str) -> Execution:
        """One execution with its step history, or NOT_FOUND."""
        check_id(workflow_id, "workflow_id")
        check_id(execution_id, "execution_id")
        return await self._with_seq(await self._repo.get(tenant, workflow_id, execution_id))

    async def list(
        self, tenant: str, workflow_id: str, size: int, token: str, filter_text: str
    ) -> Page[Execution]:
        """A workflow's executions, newest first. An unknown workflow with no
        executions is NOT_FOUND."""
        check_id(workflow_id, "workflow_id")
        state = parse_filter(filter_text)
        limit = page_size(size)
        query = f"workflow={workflow_id};state={state.value if state else ''}"
        after = decode_token(token, query)
        items, more = await self._repo.list_page(tenant, workflow_id, state, after, limit)
        if not items and after is None:
            await self._workflows.get(tenant, workflow_id)
        return next_page(items, more, query, by_create_time)

    async def approve(
        self,
        tenant: str,
        workflow_id: str,
        execution_id: str,
        step_name: str,
        input: dict[str, Any],
    ) -> Execution:
        """Completes the approval step waited on with `input` as its output;
        the execution goes on. An approval whose deadline has passed can no
        longer be given (the worker is about to fail it)."""
        waiting = await self._waiting_approval(
            tenant, workflow_id, execution_id, step_name, "approve"
        )
        if waiting.wake_time is not None and waiting.wake_time <= utcnow():
            raise FailedPrecondition(
                f"cannot approve execution {execution_id!r}: the deadline of step "
                f"{waiting.step_name!r} passed at {waiting.wake_time.isoformat()} "
                "(a timeout), so the execution fails",
                field="execution_id",
                state=ExecutionState.WAITING_APPROVAL.value,
            )
        execution, events = await self._repo.decide_approval(
            tenant,
            workflow_id,
            execution_id,
            waiting.key,
            ExecutionState.PENDING,
            StepState.COMPLETED,
            verb="approve",
            now=utcnow(),
            step_values={"output": whole_numbers(input)},
            events=[
                ev.step_completed(waiting.step_name, waiting.attempt, whole_numbers(input)),
                ev.state_changed(ExecutionState.PENDING),
            ],
        )
        await self._streams.publish(events)
        self._worker.dispatch(execution.id)
        return await self._with_seq(execution)

    async def reject(
        self, tenant: str, workflow_id: str, execution_id: str, step_name: str, reason: str
    ) -> Execution:
        """Fails the approval step waited on with `reason`; the execution
        fails."""
        waiting = await self._waiting_approval(
            tenant, workflow_id, execution_id, step_name, "reject"
        )
        step_error = f"rejected: {reason}" if reason else "rejected"
        error = f"step {waiting.step_name!r} was {step_error}"
        execution, events = await self._repo.decide_approval(
            tenant,
            workflow_id,
            execution_id,
            waiting.key,
            ExecutionState.FAILED,
            StepState.FAILED,
            verb="reject",
            now=utcnow(),
            step_values={"error": step_error},
            events=[
                ev.step_failed(waiting.step_name, waiting.attempt, step_error),
                ev.state_changed(ExecutionState.FAILED, error=error),
            ],
            error=error,
            end_time=utcnow(),
        )
        await self._streams.publish(events)
        return await self._with_seq(execution)

    async def _waiting_approval(
        self, tenant: str, workflow_id: str, execution_id: str, step_name: str, verb: str
    ) -> StepAttempt:
        execution = await self.get(tenant, workflow_id, execution_id)
        if execution.state is not ExecutionState.WAITING_APPROVAL:
            raise FailedPrecondition(
                f"cannot {verb} execution {execution_id!r}: it is {execution.state.value}, "
                "not waiting for approval (WAITING_APPROVAL)",
                field="execution_id",
                state=execution.state.value,
            )
        waiting = _waiting_approvals(execution)
        if step_name:
            chosen = [a for a in waiting if a.step_name == step_name]
            if not chosen:
                names = ", ".join(a.step_name for a in waiting)
                raise InvalidArgument(
                    f"step {step_name!r} is not waiting for approval (waiting: {names})",
                    field="step_name",
                )
            return chosen[0]
        if len(waiting) != 1:
            names = ", ".join(a.step_name for a in waiting)
            raise InvalidArgument(
                f"several steps wait for approval ({names}): set step_name", field="step_name"
            )
        return waiting[0]

    async def suspend(self, tenant: str, workflow_id: str, execution_id: str) -> Execution:
        """Stops the execution until ResumeExecution; a step attempt in
        flight is interrupted (it runs again, as its next attempt, on
        resume)."""
        self._check_ids(workflow_id, execution_id)
        execution, events = await self._repo.control(
            tenant,
            workflow_id,
            execution_id,
            _SUSPENDABLE,
            ExecutionState.SUSPENDED,
            verb="suspend",
            end_steps=[StepState.RUNNING],
            step_error="interrupted: the execution was suspended",
            now=utcnow(),
            events=[ev.state_changed(ExecutionState.SUSPENDED)],
        )
        await self._streams.publish(events)
        await self._worker.stop_everywhere(execution.id)
        return await self._with_seq(execution)

    async def resume(
        self, tenant: str, workflow_id: str, execution_id: str, input: dict[str, Any]
    ) -> Execution:
        """Resumes a suspended execution (waiting for its approval again if
        it was); `input`, if any, becomes `input.resume` for later steps."""
        current = await self.get(tenant, workflow_id, execution_id)
        target = (
            ExecutionState.WAITING_APPROVAL
            if _waiting_approvals(current)
            else ExecutionState.PENDING
        )
        values: dict[str, Any] = {"resume_input": whole_numbers(input)} if input else {}
        execution, events = await self._repo.control(
            tenant,
            workflow_id,
            execution_id,
            frozenset({ExecutionState.SUSPENDED}),
            target,
            verb="resume",
            now=utcnow(),
            events=[ev.state_changed(target)],
            **values,
        )
        await self._streams.publish(events)
        if target is ExecutionState.PENDING:
            self._worker.dispatch(execution.id)
        return await self._with_seq(execution)

    async def cancel(self, tenant: str, workflow_id: str, execution_id: str) -> Execution:
        """Cancels the execution wherever it runs, with every step attempt
        in flight (all branches of a parallel step); a finished execution is
        returned unchanged."""
        current = await self.get(tenant, workflow_id, execution_id)
        if current.state.terminal:
            return current
        error = "cancelled by CancelExecution"
        execution, events = await self._repo.control(
            tenant,
            workflow_id,
            execution_id,
            _LIVE,
            ExecutionState.CANCELLED,
            verb="cancel",
            end_steps=[StepState.RUNNING, StepState.WAITING],
            step_error="cancelled: the execution was cancelled",
            now=utcnow(),
            events=[ev.state_changed(ExecutionState.CANCELLED, error=error)],
            error=error,
            end_time=utcnow(),
        )
        await self._streams.publish(events)
        await self._worker.stop_everywhere(execution.id)
        return await self._with_seq(execution)

    async def watch(
        self, tenant: str, workflow_id: str, execution_id: str, after_seq: int = 0
    ) -> AsyncIterator[StreamEvent]:
        """The execution's events after `after_seq`: stored, then live, until
        its terminal event."""
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative", field="after_seq")
        execution = await self.get(tenant, workflow_id, execution_id)

        async def finished() -> bool:
            state = await self._repo.state_of(execution.id)
            return state is None or state.terminal

        last = after_seq
        async for event in self._streams.follow(
            tenant,
            stream_of(execution.id),
            after_seq,
            terminal_kinds=frozenset(ev.TERMINAL_KINDS.values()),
            finished=finished,
        ):
            yield event
            last = event.seq
            if event.kind in ev.TERMINAL_KINDS.values():
                return
        # The stream ended without its terminal event after the cursor: the
        # events were pruned (the execution ended more than the retention
        # ago). The terminal state is told from the row, at the stream's
        # last seq, so the watcher still ends on it.
        ended = await self._repo.get_any(execution.id)
        if ended is None:
            return
        head = await self._streams.last_seq(tenant, stream_of(execution.id))
        if ended.state.terminal and head > last:
            kind, data = ev.state_changed(ended.state, error=ended.error)
            yield StreamEvent(tenant, stream_of(execution.id), head, kind, data, ended.end_time)

    async def prune_events(self, retention_s: float) -> int:
        """Deletes the stream events of executions that ended more than
        `retention_s` ago (their step history stays)."""
        return await self._repo.prune_events(utcnow() - timedelta(seconds=retention_s))

    async def start(self) -> None:
        """Starts driving executions on this replica."""
        await self._worker.start()

    async def close(self) -> None:
        """Stops driving executions; the ones held are given back."""
        await self._worker.close()

    async def _with_seq(self, execution: Execution) -> Execution:
        execution.last_seq = await self._streams.last_seq(execution.tenant, stream_of(execution.id))
        return execution

    @staticmethod
    def _check_ids(workflow_id: str, execution_id: str) -> None:
        check_id(workflow_id, "workflow_id")
        check_id(execution_id, "execution_id")


def _waiting_approvals(execution: Execution) -> list[StepAttempt]:
    return [
        a
        for a in execution.steps
        if a.kind == StepKind.APPROVAL.value and a.state is StepState.WAITING
    ]


def whole_numbers(value: Any) -> Any:
    """`value` with every whole float as an int: protobuf Structs carry all
    numbers as doubles, and `{{ input.n }}` should render 2, not 2.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


def parse_filter(text: str) -> ExecutionState | None:
    """The state a ListExecutions filter (`state=<STATE>`) names, or None."""
    text = text.strip()
    if not text:
        return None
    name, sep, value = text.partition("=")
    value = value.strip().strip('"').upper().removeprefix("EXECUTION_STATE_")
    if not sep or name.strip() != "state" or value not in ExecutionState.__members__:
        raise InvalidArgument(
            f"filter {text[:80]!r} is not supported: use state=<STATE>, for example state=RUNNING",
            field="filter",
        )
    return ExecutionState(value)
