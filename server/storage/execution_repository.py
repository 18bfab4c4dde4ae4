"""The only code that reads and writes workflow executions and their step
attempts in SQL.

Executions are driven through a lease, as runs are: a worker takes a PENDING
execution (RUNNING, `lease_owner`, `lease_expires`, `generation + 1`), renews
the lease while it works, and every write it makes is fenced by its
generation and ownership, so a worker that lost the execution (it stalled,
or a control call took the execution away) writes nothing more."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aster.server.clock import as_utc
from aster.server.errors import FailedPrecondition, NotFound
from aster.server.pagination import Cursor
from aster.server.storage.database import Database
from aster.server.storage.execution_tables import ExecutionRow, StepAttemptRow
from aster.server.storage.row_locks import lock_in_id_order
from aster.server.storage.stream_repository import NewEvent, append_in
from aster.server.storage.stream_tables import StreamEventRow
from aster.server.streams.models import StreamEvent
from aster.server.workflows.execution_events import state_changed
from aster.server.workflows.execution_models import (
    Execution,
    ExecutionState,
    StepAttempt,
    StepState,
)

_RUNNING = ExecutionState.RUNNING.value
_PENDING = ExecutionState.PENDING.value
_OPEN_STEPS = [StepState.RUNNING.value, StepState.WAITING.value]
_APPROVAL = "approval"  # StepKind.APPROVAL, as step attempts store it


StepEnd = tuple[str, int, dict[str, Any]]
"""A step attempt's end: its key, attempt and the columns to set."""


class ExecutionFenced(Exception):
    """The worker no longer holds the execution: it must stop writing."""


@dataclass(frozen=True)
class ExecutionQueueStats:
    """The executions waiting for a worker or stuck, across the whole database."""

    pending: int = 0
    # RUNNING executions whose lease expired: nobody rescued them yet.
    lease_expired: int = 0


STREAM_PREFIX = "execution:"


def stream_of(execution_id: str) -> str:
    """The name of an execution's event stream."""
    return f"{STREAM_PREFIX}{execution_id}"


def not_found(execution_id: str) -> NotFound:
    """NOT_FOUND for an execution."""
    return NotFound(
        f"execution {execution_id!r} not found",
        field="execution_id",
        resource="execution",
        id=execution_id,
    )


class ExecutionRepository:
    """Executions and their step attempts, scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- creating and reading --------------------------------------------------

    async def create(
        self, execution: Execution, events: Sequence[NewEvent]
    ) -> tuple[Execution, list[StreamEvent]]:
        """Stores a new execution and its first events; with an idempotency
        key already used for the workflow, returns that execution instead
        (and no events)."""
        key = execution.idempotency_key
        if key:
            found = await self._by_key(execution.tenant, execution.workflow_id, key)
            if found is not None:
                return found, []
        try:
            async with self._db.session() as db:
                db.add(_to_row(execution))
                await db.flush()
                stored = await append_in(db, execution.tenant, stream_of(execution.id), events)
        except IntegrityError:
            found = await self._by_key(execution.tenant, execution.workflow_id, key)
            if found is None:
                raise
            return found, []
        return execution, stored

    async def _by_key(self, tenant: str, workflow_id: str, key: str) -> Execution | None:
        async with self._db.session() as db:
            row = await db.scalar(
                select(ExecutionRow).where(
                    ExecutionRow.tenant == tenant,
                    ExecutionRow.workflow_id == workflow_id,
                    ExecutionRow.idempotency_key == key,
                )
            )
            if row is None:
                return None
            return _to_execution(row, await _steps(db, [row.id]))

    async def get(self, tenant: str, workflow_id: str, execution_id: str) -> Execution:
        """The execution with its step history, or NOT_FOUND (also for
        another tenant's or another workflow's execution)."""
        async with self._db.session() as db:
            row = await db.get(ExecutionRow, execution_id)
            if row is None or row.tenant != tenant or row.workflow_id != workflow_id:
                raise not_found(execution_id)
            return _to_execution(row, await _steps(db, [row.id]))

    async def get_any(self, execution_id: str) -> Execution | None:
        """The execution whatever its tenant (for the worker), or None."""
        async with self._db.session() as db:
            row = await db.get(ExecutionRow, execution_id)
            if row is None:
                return None
            return _to_execution(row, await _steps(db, [row.id]))

    async def state_of(self, execution_id: str) -> ExecutionState | None:
        """Just the state (cheap), or None."""
        async with self._db.session() as db:
            value = await db.scalar(
                select(ExecutionRow.state).where(ExecutionRow.id == execution_id)
            )
        return None if value is None else ExecutionState(value)

    async def list_page(
        self,
        tenant: str,
        workflow_id: str,
        state: ExecutionState | None,
        after: Cursor | None,
        limit: int,
    ) -> tuple[list[Execution], bool]:
        """Executions of a workflow, newest first, with their steps."""
        query = select(ExecutionRow).where(
            ExecutionRow.tenant == tenant, ExecutionRow.workflow_id == workflow_id
        )
        if state is not None:
            query = query.where(ExecutionRow.state == state.value)
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    ExecutionRow.create_time < created,
                    and_(ExecutionRow.create_time == created, ExecutionRow.id < after.last_id),
                )
            )
        query = query.order_by(ExecutionRow.create_time.desc(), ExecutionRow.id.desc()).limit(
            limit + 1
        )
        async with self._db.session() as db:
            rows = (await db.scalars(query)).all()[: limit + 1]
            steps = await _steps(db, [r.id for r in rows[:limit]])
        return [_to_execution(r, steps) for r in rows[:limit]], len(rows) > limit

    async def prune_events(self, ended_before: datetime) -> int:
        """Deletes the stream events of executions that ended before
        `ended_before`; their rows, step history and stream head (its last
        seq) stay. Returns how many events went."""
        ended = exists().where(
            ExecutionRow.end_time < ended_before,
            ExecutionRow.tenant == StreamEventRow.tenant,
            StreamEventRow.stream == literal(STREAM_PREFIX) + ExecutionRow.id,
        )
        async with self._db.session() as db:
            result = await db.execute(
                delete(StreamEventRow).where(
                    StreamEventRow.stream.startswith(STREAM_PREFIX, autoescape=True), ended
                )
            )
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- leases ----------------------------------------------------------------

    async def lease(
        self, execution_id: str, owner: str, now: datetime, lease_s: float
    ) -> Execution | None:
        """PENDING → RUNNING, leased to `owner`; None if it is not PENDING
        (taken by another worker, suspended, ended)."""
        async with self._db.session() as db:
            if not await _take(db, execution_id, owner, now, lease_s):
                return None
            row = await db.get(ExecutionRow, execution_id)
            return None if row is None else _to_execution(row, await _steps(db, [row.id]))

    async def claim(self, owner: str, now: datetime, lease_s: float, limit: int) -> list[str]:
        """Leases up to `limit` PENDING executions, oldest first, in one
        statement; returns their ids. PostgreSQL skips rows other workers
        are claiming (FOR UPDATE SKIP LOCKED); SQLite serialises writers
        (the statement writes first, so it never upgrades a read snapshot)."""
        pending = (
            select(ExecutionRow.id)
            .where(ExecutionRow.state == _PENDING)
            .order_by(ExecutionRow.create_time, ExecutionRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self._db.session() as db:
            taken = await db.scalars(
                update(ExecutionRow)
                .where(
                    ExecutionRow.id.in_(pending.scalar_subquery()), ExecutionRow.state == _PENDING
                )
                .values(**_lease_values(owner, now, lease_s))
                .returning(ExecutionRow.id)
            )
            return list(taken.all())

    async def renew(
        self, owner: str, execution_ids: Sequence[str], now: datetime, lease_s: float
    ) -> set[str]:
        """Extends `owner`'s leases; returns the executions it still holds."""
        if not execution_ids:
            return set()
        mine = (
            ExecutionRow.id.in_(list(execution_ids)),
            ExecutionRow.lease_owner == owner,
            ExecutionRow.state == _RUNNING,
        )
        async with self._db.session() as db:
            held = await lock_in_id_order(db, ExecutionRow.id, *mine)
            if held:
                await db.execute(
                    update(ExecutionRow)
                    .where(ExecutionRow.id.in_(held))
                    .values(lease_expires=now + timedelta(seconds=lease_s))
                )
            return set(held)

    async def rescue(
        self,
        now: datetime,
        rescuer: str,
        max_attempts: int = 0,
        driving: Sequence[str] = (),
    ) -> tuple[list[str], list[StreamEvent]]:
        """Puts RUNNING executions whose lease lapsed (their worker died or
        stalled) back to PENDING, for any worker to take as the next
        generation. A worker does not rescue the ones it is `driving` (it is
        alive, only late), but does rescue one it holds and no longer
        drives, which nobody else would. An execution whose worker was lost
        `max_attempts` times (0: no cap) ends FAILED instead, its open step
        attempts CANCELLED. Returns the ids put back and the events of the
        executions given up."""
        lapsed = (
            ExecutionRow.state == _RUNNING,
            ExecutionRow.lease_expires < now,
            or_(ExecutionRow.lease_owner != rescuer, ExecutionRow.id.not_in(list(driving))),
        )
        async with self._db.session() as db:
            given_up: list[StreamEvent] = []
            if max_attempts:
                ended = await db.execute(
                    update(ExecutionRow)
                    .where(*lapsed, ExecutionRow.rescues + 1 >= max_attempts)
                    .values(
                        state=ExecutionState.FAILED.value,
                        lease_owner="",
                        lease_expires=None,
                        error=_gave_up(max_attempts),
                        end_time=now,
                    )
                    .returning(ExecutionRow.id, ExecutionRow.tenant)
                )
                for execution_id, tenant in ended.all():
                    error = _gave_up(max_attempts)
                    await _end_open_steps(db, execution_id, _OPEN_STEPS, error, now)
                    given_up += await append_in(
                        db,
                        tenant,
                        stream_of(execution_id),
                        [state_changed(ExecutionState.FAILED, error=error)],
                    )
            rescued = await db.scalars(
                update(ExecutionRow)
                .where(*lapsed)
                .values(
                    state=_PENDING,
                    lease_owner="",
                    lease_expires=None,
                    rescues=ExecutionRow.rescues + 1,
                )
                .returning(ExecutionRow.id)
            )
            return list(rescued.all()), given_up

    async def queue_stats(self, now: datetime) -> ExecutionQueueStats:
        """The queue for the metrics, in one aggregate query (index
        `ix_workflow_executions_state`)."""
        query = (
            select(
                ExecutionRow.state,
                func.count(),
                func.count(case((ExecutionRow.lease_expires < now, 1))),
            )
            .where(ExecutionRow.state.in_([_PENDING, _RUNNING]))
            .group_by(ExecutionRow.state)
        )
        async with self._db.session() as db:
            rows = {state: (count, lapsed) for state, count, lapsed in await db.execute(query)}
        return ExecutionQueueStats(
            pending=int(rows.get(_PENDING, (0, 0))[0]),
            lease_expired=int(rows.get(_RUNNING, (0, 0))[1]),
        )

    async def wake_approvals(self, now: datetime) -> tuple[list[str], list[StreamEvent]]:
        """Puts WAITING_APPROVAL executions whose waiting approval's deadline
        (its `wake_time`) has passed back to PENDING, for a worker to take:
        the engine then fails the approval (or the composite step whose
        timeout passed). Returns their ids and the events stored."""
        due = exists().where(
            StepAttemptRow.execution_id == ExecutionRow.id,
            StepAttemptRow.kind == _APPROVAL,
            StepAttemptRow.state == StepState.WAITING.value,
            StepAttemptRow.wake_time <= now,
        )
        async with self._db.session() as db:
            woken = await db.execute(
                update(ExecutionRow)
                .where(ExecutionRow.state == ExecutionState.WAITING_APPROVAL.value, due)
                .values(state=_PENDING)
                .returning(ExecutionRow.id, ExecutionRow.tenant)
            )
            ids: list[str] = []
            events: list[StreamEvent] = []
            for execution_id, tenant in woken.all():
                ids.append(execution_id)
                events += await append_in(
                    db, tenant, stream_of(execution_id), [state_changed(ExecutionState.PENDING)]
                )
        return ids, events

    async def release(self, execution_id: str, owner: str, generation: int, now: datetime) -> bool:
        """Gives a leased execution back (shutdown): PENDING again, and its
        running step attempts end as interrupted, so the next worker starts
        them as new attempts at once."""
        async with self._db.session() as db:
            result = await db.execute(
                update(ExecutionRow)
                .where(*_fence(execution_id, owner, generation))
                .values(state=_PENDING, lease_owner="", lease_expires=None)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            await _end_open_steps(
                db,
                execution_id,
                [StepState.RUNNING.value],
                "interrupted: the server shut down",
                now,
            )
        return True

    # -- the worker's fenced writes ---------------------------------------------

    async def add_step(
        self,
        owner: str,
        generation: int,
        tenant: str,
        step: StepAttempt,
        events: Sequence[NewEvent] = (),
        ends: Sequence[StepEnd] = (),
    ) -> list[StreamEvent]:
        """Stores the `ends` of earlier attempts, then a new step attempt
        (its start), with their events, in one transaction; ExecutionFenced
        if the worker lost the execution."""
        async with self._db.session() as db:
            await _check_fence(db, step.execution_id, owner, generation)
            await _end_steps(db, step.execution_id, ends)
            position = await db.scalar(
                select(func.count()).where(StepAttemptRow.execution_id == step.execution_id)
            )
            step.position = int(position or 0)
            db.add(_step_row(step, tenant))
            return await append_in(db, tenant, stream_of(step.execution_id), events)

    async def end_steps(
        self,
        owner: str,
        generation: int,
        tenant: str,
        execution_id: str,
        ends: Sequence[StepEnd],
        events: Sequence[NewEvent],
    ) -> list[StreamEvent]:
        """Stores the ends of step attempts with their events, in one
        transaction; ExecutionFenced if the worker lost the execution."""
        async with self._db.session() as db:
            await _check_fence(db, execution_id, owner, generation)
            await _end_steps(db, execution_id, ends)
            return await append_in(db, tenant, stream_of(execution_id), events)

    async def emit(
        self,
        owner: str,
        generation: int,
        tenant: str,
        execution_id: str,
        events: Sequence[NewEvent],
    ) -> list[StreamEvent]:
        """Stores events of a leased execution; ExecutionFenced if the
        worker lost it."""
        async with self._db.session() as db:
            await _check_fence(db, execution_id, owner, generation)
            return await append_in(db, tenant, stream_of(execution_id), events)

    async def update_step(
        self,
        owner: str,
        generation: int,
        tenant: str,
        execution_id: str,
        key: str,
        attempt: int,
        events: Sequence[NewEvent] = (),
        **values: Any,
    ) -> list[StreamEvent]:
        """Sets columns of one step attempt (its end, its run) and stores
        its events; ExecutionFenced if the worker lost the execution."""
        return await self.end_steps(
            owner, generation, tenant, execution_id, [(key, attempt, values)], events
        )

    async def cancel_open_steps(
        self,
        owner: str,
        generation: int,
        execution_id: str,
        step_names: Iterable[str],
        key_prefix: str,
        error: str,
        now: datetime,
    ) -> None:
        """Ends the running or waiting attempts of the steps `step_names`
        whose key starts with `key_prefix` as CANCELLED (the branches a
        parallel step stopped)."""
        names = list(step_names)
        if not names:
            return
        async with self._db.session() as db:
            await _check_fence(db, execution_id, owner, generation)
            await db.execute(
                update(StepAttemptRow)
                .where(
                    StepAttemptRow.execution_id == execution_id,
                    StepAttemptRow.state.in_(_OPEN_STEPS),
                    StepAttemptRow.step_name.in_(names),
                    StepAttemptRow.key.startswith(key_prefix, autoescape=True),
                )
                .values(state=StepState.CANCELLED.value, error=error, end_time=now)
            )

    async def finish(
        self,
        owner: str,
        generation: int,
        tenant: str,
        execution_id: str,
        state: ExecutionState,
        events: Sequence[NewEvent],
        **values: Any,
    ) -> list[StreamEvent]:
        """Moves a leased execution to `state` (a terminal one, or
        WAITING_APPROVAL), releases the lease and stores `events`;
        ExecutionFenced if the worker lost it."""
        async with self._db.session() as db:
            result = await db.execute(
                update(ExecutionRow)
                .where(*_fence(execution_id, owner, generation))
                .values(state=state.value, lease_owner="", lease_expires=None, **values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise ExecutionFenced(execution_id)
            return await append_in(db, tenant, stream_of(execution_id), events)

    # -- control -----------------------------------------------------------------

    async def control(
        self,
        tenant: str,
        workflow_id: str,
        execution_id: str,
        allowed: frozenset[ExecutionState],
        target: ExecutionState,
        *,
        verb: str,
        end_steps: Sequence[StepState] = (),
        step_error: str = "",
        now: datetime,
        events: Sequence[NewEvent] = (),
        **values: Any,
    ) -> tuple[Execution, list[StreamEvent]]:
        """Moves an execution in one of the `allowed` states to `target`,
        taking it from its worker (the lease is cleared, so the worker's
        further writes are refused), and ends its step attempts in
        `end_steps` as CANCELLED with `step_error`. FAILED_PRECONDITION,
        naming the state, otherwise. Returns the execution after the change."""
        async with self._db.session() as db:
            result = await db.execute(
                update(ExecutionRow)
                .where(
                    *_owned(tenant, workflow_id, execution_id),
                    ExecutionRow.state.in_([s.value for s in allowed]),
                )
                .values(state=target.value, lease_owner="", lease_expires=None, **values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise await self._refusal(db, tenant, workflow_id, execution_id, verb, allowed)
            if end_steps:
                await _end_open_steps(
                    db, execution_id, [s.value for s in end_steps], step_error, now
                )
            stored = await append_in(db, tenant, stream_of(execution_id), events)
        current = await self.get_any(execution_id)
        assert current is not None
        return current, stored

    async def decide_approval(
        self,
        tenant: str,
        workflow_id: str,
        execution_id: str,
        step_key: str,
        target: ExecutionState,
        step_state: StepState,
        *,
        verb: str,
        now: datetime,
        step_values: dict[str, Any],
        events: Sequence[NewEvent] = (),
        **values: Any,
    ) -> tuple[Execution, list[StreamEvent]]:
        """Approves or rejects: the execution, WAITING_APPROVAL on
        `step_key`, moves to `target` and the waiting attempt ends in
        `step_state`, in one transaction."""
        waiting = frozenset({ExecutionState.WAITING_APPROVAL})
        async with self._db.session() as db:
            result = await db.execute(
                update(ExecutionRow)
                .where(
                    *_owned(tenant, workflow_id, execution_id),
                    ExecutionRow.state == ExecutionState.WAITING_APPROVAL.value,
                )
                .values(state=target.value, **values)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise await self._refusal(db, tenant, workflow_id, execution_id, verb, waiting)
            ended = await db.execute(
                update(StepAttemptRow)
                .where(
                    StepAttemptRow.execution_id == execution_id,
                    StepAttemptRow.key == step_key,
                    StepAttemptRow.state == StepState.WAITING.value,
                )
                .values(state=step_state.value, end_time=now, **step_values)
            )
            if not ended.rowcount:  # type: ignore[attr-defined]
                raise FailedPrecondition(
                    f"step {step_key!r} of execution {execution_id!r} is not waiting for approval",
                    field="step_name",
                )
            if target.terminal:
                # The steps that enclose the approval (a loop, a parallel
                # step) end too, and so do the other branches' open steps
                # (another approval, a wait).
                await _end_open_steps(
                    db,
                    execution_id,
                    _OPEN_STEPS,
                    "the execution ended: its approval was rejected",
                    now,
                )
            stored = await append_in(db, tenant, stream_of(execution_id), events)
        current = await self.get_any(execution_id)
        assert current is not None
        return current, stored

    async def _refusal(
        self,
        db: AsyncSession,
        tenant: str,
        workflow_id: str,
        execution_id: str,
        verb: str,
        allowed: frozenset[ExecutionState],
    ) -> Exception:
        state = await db.scalar(
            select(ExecutionRow.state).where(*_owned(tenant, workflow_id, execution_id))
        )
        if state is None:
            return not_found(execution_id)
        return _wrong_state(execution_id, ExecutionState(state), verb, allowed)


def _gave_up(attempts: int) -> str:
    return (
        f"gave up after {attempts} attempts: the worker driving the execution "
        "stopped every time (see ASTER_RUN_MAX_ATTEMPTS)"
    )


def _owned(tenant: str, workflow_id: str, execution_id: str) -> tuple[Any, ...]:
    return (
        ExecutionRow.id == execution_id,
        ExecutionRow.tenant == tenant,
        ExecutionRow.workflow_id == workflow_id,
    )


def _wrong_state(
    execution_id: str, state: ExecutionState, verb: str, allowed: frozenset[ExecutionState]
) -> FailedPrecondition:
    wanted = " or ".join(sorted(s.value for s in allowed))
    return FailedPrecondition(
        f"cannot {verb} execution {execution_id!r}: it is {state.value}, not {wanted}",
        field="execution_id",
        state=state.value,
    )


def _fence(execution_id: str, owner: str, generation: int) -> tuple[Any, ...]:
    return (
        ExecutionRow.id == execution_id,
        ExecutionRow.generation == generation,
        ExecutionRow.lease_owner == owner,
        ExecutionRow.state == _RUNNING,
    )


async def _check_fence(db: AsyncSession, execution_id: str, owner: str, generation: int) -> None:
    """Takes the execution row's write lock if this worker still holds the
    execution (a write first, so SQLite serialises and PostgreSQL keeps a
    control call out until this transaction commits); ExecutionFenced
    otherwise."""
    result = await db.execute(
        update(ExecutionRow)
        .where(*_fence(execution_id, owner, generation))
        .values(generation=ExecutionRow.generation)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise ExecutionFenced(execution_id)


async def _end_steps(db: AsyncSession, execution_id: str, ends: Sequence[StepEnd]) -> None:
    for key, attempt, values in ends:
        await db.execute(
            update(StepAttemptRow)
            .where(
                StepAttemptRow.execution_id == execution_id,
                StepAttemptRow.key == key,
                StepAttemptRow.attempt == attempt,
            )
            .values(**values)
        )


async def _end_open_steps(
    db: AsyncSession, execution_id: str, states: list[str], error: str, now: datetime
) -> None:
    await db.execute(
        update(StepAttemptRow)
        .where(StepAttemptRow.execution_id == execution_id, StepAttemptRow.state.in_(states))
        .values(state=StepState.CANCELLED.value, error=error, end_time=now)
    )


async def _take(
    db: AsyncSession, execution_id: str, owner: str, now: datetime, lease_s: float
) -> bool:
    result = await db.execute(
        update(ExecutionRow)
        .where(ExecutionRow.id == execution_id, ExecutionRow.state == _PENDING)
        .values(**_lease_values(owner, now, lease_s))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _lease_values(owner: str, now: datetime, lease_s: float) -> dict[str, Any]:
    """PENDING → RUNNING as the next generation, leased to `owner`."""
    return {
        "state": _RUNNING,
        "generation": ExecutionRow.generation + 1,
        "lease_owner": owner,
        "lease_expires": now + timedelta(seconds=lease_s),
        "start_time": func.coalesce(ExecutionRow.start_time, now),
    }


async def _steps(db: AsyncSession, execution_ids: list[str]) -> dict[str, list[StepAttempt]]:
    if not execution_ids:
        return {}
    rows = (
        await db.scalars(
            select(StepAttemptRow)
            .where(StepAttemptRow.execution_id.in_(execution_ids))
            .order_by(StepAttemptRow.execution_id, StepAttemptRow.position)
        )
    ).all()
    found: dict[str, list[StepAttempt]] = {}
    for row in rows:
        found.setdefault(row.execution_id, []).append(_to_step(row))
    return found


def _to_row(execution: Execution) -> ExecutionRow:
    return ExecutionRow(
        id=execution.id,
        tenant=execution.tenant,
        workflow_id=execution.workflow_id,
        workflow_version=execution.workflow_version,
        definition=execution.definition,
        state=execution.state.value,
        input=execution.input,
        resume_input=execution.resume_input,
        output=execution.output,
        error=execution.error,
        idempotency_key=execution.idempotency_key,
        generation=execution.generation,
        lease_owner=execution.lease_owner,
        lease_expires=None,
        create_time=execution.create_time,
        start_time=execution.start_time,
        end_time=execution.end_time,
    )


def _to_execution(row: ExecutionRow, steps: dict[str, list[StepAttempt]]) -> Execution:
    return Execution(
        id=row.id,
        tenant=row.tenant,
        workflow_id=row.workflow_id,
        workflow_version=row.workflow_version,
        state=ExecutionState(row.state),
        input=dict(row.input),
        create_time=as_utc(row.create_time),
        definition=dict(row.definition),
        resume_input=dict(row.resume_input or {}),
        output=row.output,
        error=row.error,
        idempotency_key=row.idempotency_key,
        generation=row.generation,
        lease_owner=row.lease_owner,
        start_time=as_utc(row.start_time) if row.start_time else None,
        end_time=as_utc(row.end_time) if row.end_time else None,
        steps=steps.get(row.id, []),
    )


def _step_row(step: StepAttempt, tenant: str) -> StepAttemptRow:
    return StepAttemptRow(
        execution_id=step.execution_id,
        key=step.key,
        attempt=step.attempt,
        tenant=tenant,
        step_name=step.step_name,
        kind=step.kind,
        state=step.state.value,
        input=step.input,
        output=step.output,
        error=step.error,
        run_id=step.run_id,
        wake_time=step.wake_time,
        position=step.position,
        start_time=step.start_time,
        end_time=step.end_time,
    )


def _to_step(row: StepAttemptRow) -> StepAttempt:
    return StepAttempt(
        execution_id=row.execution_id,
        key=row.key,
        step_name=row.step_name,
        kind=row.kind,
        attempt=row.attempt,
        state=StepState(row.state),
        start_time=as_utc(row.start_time),
        input=row.input,
        output=row.output,
        error=row.error,
        run_id=row.run_id,
        wake_time=as_utc(row.wake_time) if row.wake_time else None,
        end_time=as_utc(row.end_time) if row.end_time else None,
        position=row.position,
    )
