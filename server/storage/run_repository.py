"""The only code that reads and writes runs and run events in SQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from aster.server.clock import as_utc
from aster.server.errors import NotFound
from aster.server.pagination import Cursor
from aster.server.runs.models import (
    ACTIVE_STATUSES,
    OnDisconnect,
    Run,
    RunEvent,
    RunStatus,
)
from aster.server.sessions.models import Checkpoint
from aster.server.storage.database import Database
from aster.server.storage.row_locks import lock_in_id_order
from aster.server.storage.run_tables import RunEventRow, RunRow, SessionRow
from aster.server.storage.session_repository import checkpoint_row

_ACTIVE = [s.value for s in ACTIVE_STATUSES]


@dataclass(frozen=True)
class RunQueueStats:
    """The run queue across the whole database, at one instant."""

    # Runs QUEUED, including the ones waiting for an earlier run of their session.
    queued: int = 0
    # The creation time of the oldest QUEUED run that could start now (its
    # session has no earlier active run), or None.
    oldest_ready: datetime | None = None
    # RUNNING runs whose lease expired: nobody rescued them yet.
    lease_expired: int = 0


class RunRepository:
    """Runs and their event logs, scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def admit(
        self,
        tenant: str,
        run: Run,
        decide: Callable[[list[Run]], str],
    ) -> tuple[Run, list[Run]]:
        """Stores `run` in its session unless `decide` refuses (by raising).

        The session row is written first, which locks it, so admissions of
        one session are serialised. `decide` sees the session's active runs,
        oldest first, and returns the id of the run the new one waits for
        (or ""). Returns the stored run and the active runs `decide` saw."""
        async with self._db.session() as db:
            bumped = await db.execute(
                update(SessionRow)
                .where(SessionRow.tenant == tenant, SessionRow.id == run.session_id)
                .values(admissions=SessionRow.admissions + 1)
            )
            if bumped.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(
                    f"session {run.session_id!r} not found",
                    field="session_id",
                    resource="session",
                    id=run.session_id,
                )
            rows = (
                await db.scalars(
                    select(RunRow)
                    .where(
                        RunRow.tenant == tenant,
                        RunRow.session_id == run.session_id,
                        RunRow.status.in_(_ACTIVE),
                    )
                    .order_by(RunRow.create_time, RunRow.id)
                )
            ).all()
            active = [_to_run(r) for r in rows]
            run.after_run_id = decide(active)
            db.add(_to_row(run))
        return run, active

    async def get(self, tenant: str, run_id: str) -> Run:
        """The run, or NOT_FOUND."""
        async with self._db.session() as db:
            row = await db.get(RunRow, run_id)
        if row is None or row.tenant != tenant:
            raise NotFound(f"run {run_id!r} not found", resource="run", id=run_id)
        return _to_run(row)

    async def get_any(self, run_id: str) -> Run | None:
        """The run whatever its tenant (for the executor), or None."""
        async with self._db.session() as db:
            row = await db.get(RunRow, run_id)
        return None if row is None else _to_run(row)

    async def list_page(
        self,
        tenant: str,
        agent_id: str,
        session_id: str,
        after: Cursor | None,
        limit: int,
    ) -> tuple[list[Run], bool]:
        """Runs of an agent and/or a session, newest first."""
        query = select(RunRow).where(RunRow.tenant == tenant)
        if agent_id:
            query = query.where(RunRow.agent_id == agent_id)
        if session_id:
            query = query.where(RunRow.session_id == session_id)
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    RunRow.create_time < created,
                    and_(RunRow.create_time == created, RunRow.id < after.last_id),
                )
            )
        query = query.order_by(RunRow.create_time.desc(), RunRow.id.desc()).limit(limit + 1)
        async with self._db.session() as db:
            rows = (await db.scalars(query)).all()
        return [_to_run(r) for r in rows[:limit]], len(rows) > limit

    async def update(self, run_id: str, **values: Any) -> None:
        """Sets columns of one run."""
        async with self._db.session() as db:
            await db.execute(update(RunRow).where(RunRow.id == run_id).values(**values))

    async def lease(self, run_id: str, owner: str, now: datetime, lease_s: float) -> Run | None:
        """QUEUED → RUNNING, leased to `owner`; None if someone else took it
        or it is no longer QUEUED (cancelled)."""
        async with self._db.session() as db:
            if not await _take(db, run_id, owner, now, lease_s):
                return None
            row = await db.get(RunRow, run_id)
            return None if row is None else _to_run(row)

    async def claim(self, owner: str, now: datetime, lease_s: float, limit: int) -> list[Run]:
        """Leases up to `limit` QUEUED runs whose predecessor (ENQUEUE) has
        ended, oldest first. PostgreSQL skips rows other workers are
        claiming (FOR UPDATE SKIP LOCKED); SQLite serialises writers."""
        waiting = select(RunRow.id).where(RunRow.status.in_(_ACTIVE)).scalar_subquery()
        query = (
            select(RunRow.id)
            .where(
                RunRow.status == RunStatus.QUEUED.value,
                or_(RunRow.after_run_id == "", RunRow.after_run_id.not_in(waiting)),
            )
            .order_by(RunRow.create_time, RunRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        taken: list[Run] = []
        async with self._db.session() as db:
            for run_id in (await db.scalars(query)).all():
                if await _take(db, run_id, owner, now, lease_s):
                    row = await db.get(RunRow, run_id)
                    if row is not None:
                        taken.append(_to_run(row))
        return taken

    async def renew(
        self, owner: str, run_ids: Sequence[str], now: datetime, lease_s: float
    ) -> set[str]:
        """Extends `owner`'s leases on `run_ids`; returns the ones it still holds."""
        if not run_ids:
            return set()
        mine = (
            RunRow.id.in_(list(run_ids)),
            RunRow.lease_owner == owner,
            RunRow.status == RunStatus.RUNNING.value,
        )
        async with self._db.session() as db:
            held = await lock_in_id_order(db, RunRow.id, *mine)
            if held:
                await db.execute(
                    update(RunRow)
                    .where(RunRow.id.in_(held))
                    .values(lease_expires=now + timedelta(seconds=lease_s))
                )
            return set(held)

    async def rescue(
        self, now: datetime, rescuer: str = "", max_attempts: int = 0
    ) -> tuple[list[str], list[RunEvent]]:
        """Re-queues, as their next attempt, the RUNNING runs whose lease
        lapsed (their worker died or stalled). A worker never rescues its
        own runs (`rescuer`): it is alive, only late. A run that already had
        `max_attempts` attempts (0: no cap) ends FAILED instead. Returns the
        re-queued ids and the stored last events of the runs given up."""
        async with self._db.session() as db:
            lapsed = (
                await db.execute(
                    select(RunRow.id, RunRow.attempt, RunRow.last_seq)
                    .where(
                        RunRow.status == RunStatus.RUNNING.value,
                        RunRow.lease_expires < now,
                        RunRow.lease_owner != rescuer,
                    )
                    .order_by(RunRow.id)  # each is locked in turn: in id order
                )
            ).all()
            rescued: list[str] = []
            given_up: list[RunEvent] = []
            for run_id, attempt, last_seq in lapsed:
                if max_attempts and attempt >= max_attempts:
                    events = await _give_up(db, run_id, attempt, last_seq, now)
                    given_up.extend(events[-1:])
                    continue
                if await requeue_lapsed(db, run_id, attempt, last_seq, now):
                    rescued.append(run_id)
        return rescued, given_up

    async def queue_stats(self, now: datetime) -> RunQueueStats:
        """The queue for the metrics, in one aggregate query over the active
        runs (index `ix_runs_status`); a QUEUED run's predecessor is found
        by primary key."""
        predecessor = aliased(RunRow)
        ready = predecessor.id.is_(None)
        query = (
            select(
                RunRow.status,
                func.count(),
                func.min(case((ready, RunRow.create_time))),
                func.count(case((RunRow.lease_expires < now, 1))),
            )
            .outerjoin(
                predecessor,
                and_(
                    RunRow.status == RunStatus.QUEUED.value,
                    predecessor.id == RunRow.after_run_id,
                    predecessor.status.in_(_ACTIVE),
                ),
            )
            .where(RunRow.status.in_(_ACTIVE))
            .group_by(RunRow.status)
        )
        async with self._db.session() as db:
            rows = {status: rest for status, *rest in (await db.execute(query)).all()}
        queued, oldest, _ = rows.get(RunStatus.QUEUED.value, (0, None, 0))
        _, _, lapsed = rows.get(RunStatus.RUNNING.value, (0, None, 0))
        return RunQueueStats(
            queued=int(queued),
            oldest_ready=as_utc(oldest) if oldest is not None else None,
            lease_expired=int(lapsed),
        )

    async def cancel_unstarted(self, run_id: str, owner: str, end_time: datetime) -> bool:
        """→ CANCELLED if the run is QUEUED, or RUNNING under `owner`'s lease
        but not yet executing (its worker was cancelled while leasing it);
        False if it started elsewhere or ended."""
        async with self._db.session() as db:
            result = await db.execute(
                update(RunRow)
                .where(
                    RunRow.id == run_id,
                    or_(
                        RunRow.status == RunStatus.QUEUED.value,
                        and_(
                            RunRow.status == RunStatus.RUNNING.value,
                            RunRow.lease_owner == owner,
                        ),
                    ),
                )
                .values(
                    status=RunStatus.CANCELLED.value,
                    end_time=end_time,
                    error="the run was cancelled",
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def active_in_session(self, tenant: str, session_id: str) -> list[Run]:
        """The session's QUEUED and RUNNING runs, oldest first."""
        async with self._db.session() as db:
            rows = (
                await db.scalars(
                    select(RunRow)
                    .where(
                        RunRow.tenant == tenant,
                        RunRow.session_id == session_id,
                        RunRow.status.in_(_ACTIVE),
                    )
                    .order_by(RunRow.create_time, RunRow.id)
                )
            ).all()
        return [_to_run(r) for r in rows]

    async def finish(
        self,
        run_id: str,
        last_event: RunEvent,
        checkpoint: Checkpoint | None = None,
        **values: Any,
    ) -> bool:
        """Stores a run's final state, its last event and the session's new
        checkpoint in one transaction, so whoever sees the run ended also
        sees them. False (and nothing stored) if the attempt lost its lease:
        fencing."""
        async with self._db.session() as db:
            result = await db.execute(
                update(RunRow)
                .where(
                    RunRow.id == run_id,
                    RunRow.attempt == last_event.attempt,
                    RunRow.status.in_(_ACTIVE),
                )
                .values(**values, last_seq=last_event.seq, lease_owner="", lease_expires=None)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            db.add(_event_row(last_event))
            if checkpoint is not None:
                row = await db.get(RunRow, run_id)
                assert row is not None
                db.add(checkpoint_row(row.tenant, checkpoint))
        return True

    async def append_events(self, events: Sequence[RunEvent]) -> set[tuple[str, int]]:
        """Stores events (of any runs) in one transaction and advances each
        run's `last_seq`. Events of an attempt that is no longer the run's
        current one, or of a run no longer active, are refused (fencing: a
        worker that lost its lease writes nothing); returns those
        (run id, attempt) pairs."""
        if not events:
            return set()
        groups: dict[tuple[str, int], list[RunEvent]] = {}
        for event in events:
            groups.setdefault((event.run_id, event.attempt), []).append(event)
        fenced: set[tuple[str, int]] = set()
        async with self._db.session() as db:
            # In id order, like every transaction locking several runs.
            for (run_id, attempt), group in sorted(groups.items()):
                result = await db.execute(
                    update(RunRow)
                    .where(
                        RunRow.id == run_id,
                        RunRow.attempt == attempt,
                        RunRow.status.in_(_ACTIVE),
                    )
                    .values(last_seq=max(e.seq for e in group))
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    fenced.add((run_id, attempt))
                    continue
                db.add_all(_event_row(e) for e in group)
        return fenced

    async def append_final_event(self, event: RunEvent) -> None:
        """Stores the last event of a run that already ended (cancelled while queued)."""
        async with self._db.session() as db:
            db.add(_event_row(event))
            await db.execute(
                update(RunRow).where(RunRow.id == event.run_id).values(last_seq=event.seq)
            )

    async def events(
        self, run_id: str, session_id: str, after_seq: int, limit: int
    ) -> list[RunEvent]:
        """Up to `limit` stored events of the run with seq > after_seq."""
        query = (
            select(RunEventRow)
            .where(RunEventRow.run_id == run_id, RunEventRow.seq > after_seq)
            .order_by(RunEventRow.seq)
            .limit(limit)
        )
        async with self._db.session() as db:
            rows = (await db.scalars(query)).all()
        return [
            RunEvent(
                run_id=r.run_id,
                session_id=session_id,
                seq=r.seq,
                attempt=r.attempt,
                kind=r.kind,
                data=dict(r.data),
                create_time=as_utc(r.create_time),
            )
            for r in rows
        ]

    async def active_count(self, tenant: str) -> int:
        """How many of the tenant's runs are QUEUED or RUNNING."""
        async with self._db.session() as db:
            count = await db.scalar(
                select(func.count()).where(RunRow.tenant == tenant, RunRow.status.in_(_ACTIVE))
            )
        return int(count or 0)

    async def tokens_since(self, tenant: str, since: datetime) -> int:
        """Tokens (in + out) used by the tenant's runs created since `since`."""
        async with self._db.session() as db:
            total = await db.scalar(
                select(
                    func.coalesce(func.sum(RunRow.input_tokens + RunRow.output_tokens), 0)
                ).where(RunRow.tenant == tenant, RunRow.create_time >= since)
            )
        return int(total or 0)

    async def agent_activity(self, tenant: str, agent_id: str) -> tuple[int, datetime | None]:
        """How many runs of the agent are active, and its last activity."""
        async with self._db.session() as db:
            active = await db.scalar(
                select(func.count()).where(
                    RunRow.tenant == tenant,
                    RunRow.agent_id == agent_id,
                    RunRow.status.in_(_ACTIVE),
                )
            )
            times = (
                await db.execute(
                    select(func.max(RunRow.create_time), func.max(RunRow.end_time)).where(
                        RunRow.tenant == tenant, RunRow.agent_id == agent_id
                    )
                )
            ).one()
        known = [as_utc(t) for t in times if t is not None]
        return int(active or 0), (max(known) if known else None)

    async def agent_stats(
        self, tenant: str, agent_id: str
    ) -> tuple[dict[str, int], int, int, float]:
        """Runs by status, tokens in and out, and mean time to first token."""
        async with self._db.session() as db:
            by_status = (
                await db.execute(
                    select(RunRow.status, func.count())
                    .where(RunRow.tenant == tenant, RunRow.agent_id == agent_id)
                    .group_by(RunRow.status)
                )
            ).all()
            totals = (
                await db.execute(
                    select(
                        func.coalesce(func.sum(RunRow.input_tokens), 0),
                        func.coalesce(func.sum(RunRow.output_tokens), 0),
                        func.avg(RunRow.first_token_ms),
                    ).where(RunRow.tenant == tenant, RunRow.agent_id == agent_id)
                )
            ).one()
        return (
            {str(status): int(count) for status, count in by_status},
            int(totals[0]),
            int(totals[1]),
            float(totals[2] or 0.0),
        )

    async def prune_events(self, ended_before: datetime) -> int:
        """Deletes the events of runs that ended before `ended_before`."""
        finished = select(RunRow.id).where(RunRow.end_time < ended_before)
        async with self._db.session() as db:
            result = await db.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(finished)))
        return int(result.rowcount)  # type: ignore[attr-defined]


def _event_row(event: RunEvent) -> RunEventRow:
    return RunEventRow(
        run_id=event.run_id,
        seq=event.seq,
        attempt=event.attempt,
        kind=event.kind,
        data=event.data,
        create_time=event.create_time,
    )


def _still_lapsed(run_id: str, attempt: int, last_seq: int, now: datetime) -> list[Any]:
    """Conditions that the run is as the rescuer read it: the same attempt,
    RUNNING, its lease still lapsed (its worker did not renew meanwhile) and
    no event stored since (so the rescuer's events take the next seqs)."""
    return [
        RunRow.id == run_id,
        RunRow.attempt == attempt,
        RunRow.status == RunStatus.RUNNING.value,
        RunRow.lease_expires < now,
        RunRow.last_seq == last_seq,
    ]


async def requeue_lapsed(
    db: AsyncSession, run_id: str, attempt: int, last_seq: int, now: datetime
) -> bool:
    """Queues a lapsed run again as its next attempt, unless it changed
    since the rescuer read it (see `_still_lapsed`)."""
    result = await db.execute(
        update(RunRow)
        .where(*_still_lapsed(run_id, attempt, last_seq, now))
        .values(
            status=RunStatus.QUEUED.value,
            attempt=attempt + 1,
            lease_owner="",
            lease_expires=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def _give_up(
    db: AsyncSession, run_id: str, attempt: int, last_seq: int, now: datetime
) -> list[RunEvent]:
    """Ends a run that lost its worker `attempt` times: FAILED, with an
    error event and its last event."""
    message = f"gave up after {attempt} attempts: the worker running it stopped every time"
    result = await db.execute(
        update(RunRow)
        .where(*_still_lapsed(run_id, attempt, last_seq, now))
        .values(
            status=RunStatus.FAILED.value,
            error=message,
            end_time=now,
            last_seq=last_seq + 2,
            lease_owner="",
            lease_expires=None,
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return []
    row = await db.get(RunRow, run_id)
    session_id = row.session_id if row else ""
    events = [
        RunEvent(
            run_id,
            session_id,
            last_seq + 1,
            attempt,
            "error",
            {"code": "UNAVAILABLE", "message": message},
            now,
        ),
        RunEvent(
            run_id,
            session_id,
            last_seq + 2,
            attempt,
            "run_finished",
            {"status": RunStatus.FAILED.value, "result": None},
            now,
        ),
    ]
    db.add_all(_event_row(e) for e in events)
    return events


async def _take(db: AsyncSession, run_id: str, owner: str, now: datetime, lease_s: float) -> bool:
    result = await db.execute(
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == RunStatus.QUEUED.value)
        .values(
            status=RunStatus.RUNNING.value,
            lease_owner=owner,
            lease_expires=now + timedelta(seconds=lease_s),
            start_time=func.coalesce(RunRow.start_time, now),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _to_row(run: Run) -> RunRow:
    return RunRow(
        id=run.id,
        tenant=run.tenant,
        agent_id=run.agent_id,
        session_id=run.session_id,
        status=run.status.value,
        attempt=run.attempt,
        input_text=run.input_text,
        input_message_id=run.input_message_id,
        result_message_id=run.result_message_id,
        result_text=run.result_text,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        error=run.error,
        background=run.background,
        on_disconnect=run.on_disconnect.value,
        after_run_id=run.after_run_id,
        first_token_ms=run.first_token_ms,
        last_seq=run.last_seq,
        create_time=run.create_time,
        start_time=run.start_time,
        end_time=run.end_time,
    )


def _to_run(row: RunRow) -> Run:
    return Run(
        id=row.id,
        tenant=row.tenant,
        agent_id=row.agent_id,
        session_id=row.session_id,
        status=RunStatus(row.status),
        input_text=row.input_text,
        create_time=as_utc(row.create_time),
        attempt=row.attempt,
        background=row.background,
        on_disconnect=OnDisconnect(row.on_disconnect),
        after_run_id=row.after_run_id,
        input_message_id=row.input_message_id,
        result_message_id=row.result_message_id,
        result_text=row.result_text,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        error=row.error,
        first_token_ms=row.first_token_ms,
        last_seq=row.last_seq,
        lease_owner=row.lease_owner,
        start_time=as_utc(row.start_time) if row.start_time else None,
        end_time=as_utc(row.end_time) if row.end_time else None,
    )
