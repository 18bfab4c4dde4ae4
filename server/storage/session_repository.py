"""The only code that reads and writes sessions, messages and checkpoints in SQL."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, NotFound
from aster.server.pagination import Cursor
from aster.server.sessions.models import (
    Checkpoint,
    Message,
    Session,
    SessionSpec,
    SessionStats,
    ToolCallRecord,
)
from aster.server.storage.database import Database
from aster.server.storage.run_tables import (
    CheckpointRow,
    MessageRow,
    RunEventRow,
    RunRow,
    SessionRow,
)


class SessionRepository:
    """Sessions and their messages and checkpoints, scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, session: Session) -> Session:
        """Inserts `session`; ALREADY_EXISTS if its id is taken."""
        row = SessionRow(
            tenant=tenant,
            id=session.id,
            agent_id=session.spec.agent_id,
            display_name=session.spec.display_name,
            labels=dict(session.spec.labels),
            metadata_=session.spec.metadata,
            parent_session_id=session.parent_session_id,
            parent_checkpoint_id=session.parent_checkpoint_id,
            create_time=session.create_time,
            update_time=session.update_time,
            revision=session.revision,
            admissions=0,
        )
        try:
            async with self._db.session() as db:
                db.add(row)
        except IntegrityError:
            raise AlreadyExists(
                f"session {session.id!r} already exists", field="session_id"
            ) from None
        return session

    async def get(self, tenant: str, session_id: str) -> Session:
        """The session, or NOT_FOUND."""
        async with self._db.session() as db:
            return _to_session(await _row(db, tenant, session_id))

    async def list_page(
        self, tenant: str, agent_id: str, after: Cursor | None, limit: int
    ) -> tuple[list[Session], bool]:
        """Up to `limit` sessions after `after`, oldest first."""
        query = select(SessionRow).where(SessionRow.tenant == tenant)
        if agent_id:
            query = query.where(SessionRow.agent_id == agent_id)
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    SessionRow.create_time > created,
                    and_(SessionRow.create_time == created, SessionRow.id > after.last_id),
                )
            )
        query = query.order_by(SessionRow.create_time, SessionRow.id).limit(limit + 1)
        async with self._db.session() as db:
            rows = (await db.scalars(query)).all()
        return [_to_session(r) for r in rows[:limit]], len(rows) > limit

    async def replace(self, tenant: str, session: Session, expected_revision: int) -> Session:
        """Writes the session's spec if its revision is still `expected_revision`."""
        statement = (
            update(SessionRow)
            .where(
                SessionRow.tenant == tenant,
                SessionRow.id == session.id,
                SessionRow.revision == expected_revision,
            )
            .values(
                display_name=session.spec.display_name,
                labels=dict(session.spec.labels),
                metadata_=session.spec.metadata,
                update_time=session.update_time,
                revision=expected_revision + 1,
            )
        )
        async with self._db.session() as db:
            if (await db.execute(statement)).rowcount == 0:  # type: ignore[attr-defined]
                await _row(db, tenant, session.id)
                raise _conflict(session.id)
        return dataclasses.replace(session, revision=expected_revision + 1)

    async def delete(self, tenant: str, session_id: str, expected_revision: int | None) -> None:
        """Deletes the session with its messages, checkpoints, runs and events."""
        async with self._db.session() as db:
            row = await _row(db, tenant, session_id)
            if expected_revision is not None and row.revision != expected_revision:
                raise _conflict(session_id)
            run_ids = select(RunRow.id).where(
                RunRow.tenant == tenant, RunRow.session_id == session_id
            )
            await db.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(run_ids)))
            for table in (RunRow, MessageRow, CheckpointRow):
                await db.execute(
                    delete(table).where(table.tenant == tenant, table.session_id == session_id)
                )
            await db.delete(row)

    async def count(self, tenant: str) -> int:
        """How many sessions the tenant has."""
        async with self._db.session() as db:
            total = await db.scalar(
                select(func.count()).select_from(SessionRow).where(SessionRow.tenant == tenant)
            )
        return int(total or 0)

    async def append_message(
        self, tenant: str, message: Message, attempt: int | None = None
    ) -> Message:
        """Stores `message` after the session's last one; returns it with its
        position. With `attempt`, only while that attempt of the message's
        run is the current, running one (fencing: raises RunAttemptStale)."""
        async with self._db.session() as db:
            if attempt is not None:
                # A no-op UPDATE, not a SELECT: it locks the run's row until
                # this message commits, so a rescue that bumps the attempt
                # (and then deactivates the old attempt's messages) waits for
                # it instead of slipping in between the check and the insert.
                held = await db.execute(
                    update(RunRow)
                    .where(
                        RunRow.id == message.run_id,
                        RunRow.attempt == attempt,
                        RunRow.status == "RUNNING",
                    )
                    .values(attempt=RunRow.attempt)
                )
                if not held.rowcount:  # type: ignore[attr-defined]
                    raise RunAttemptStale(message.run_id)
            last = await db.scalar(
                select(func.max(MessageRow.position)).where(
                    MessageRow.tenant == tenant, MessageRow.session_id == message.session_id
                )
            )
            position = int(last or 0) + 1
            db.add(
                MessageRow(
                    id=message.id,
                    tenant=tenant,
                    session_id=message.session_id,
                    position=position,
                    role=message.role,
                    content=message.content,
                    tool_calls=[dataclasses.asdict(c) for c in message.tool_calls],
                    tool_call_id=message.tool_call_id,
                    run_id=message.run_id,
                    create_time=message.create_time,
                    active=True,
                )
            )
        return dataclasses.replace(message, position=position)

    async def messages(
        self,
        tenant: str,
        session_id: str,
        *,
        newest_first: bool = False,
        after_position: int | None = None,
        limit: int | None = None,
    ) -> list[Message]:
        """The session's active messages in order, after `after_position`
        (in the direction of the order)."""
        query = select(MessageRow).where(
            MessageRow.tenant == tenant,
            MessageRow.session_id == session_id,
            MessageRow.active.is_(True),
        )
        if after_position is not None:
            query = query.where(
                MessageRow.position < after_position
                if newest_first
                else MessageRow.position > after_position
            )
        order = MessageRow.position.desc() if newest_first else MessageRow.position
        query = query.order_by(order)
        if limit is not None:
            query = query.limit(limit)
        async with self._db.session() as db:
            return [_to_message(r) for r in (await db.scalars(query)).all()]

    async def next_turn(self, tenant: str, session_id: str) -> tuple[int, int]:
        """The number of the session's next checkpoint, and its active message count."""
        async with self._db.session() as db:
            turn = await db.scalar(
                select(func.max(CheckpointRow.turn)).where(
                    CheckpointRow.tenant == tenant, CheckpointRow.session_id == session_id
                )
            )
            count = await db.scalar(
                select(func.count()).where(
                    MessageRow.tenant == tenant,
                    MessageRow.session_id == session_id,
                    MessageRow.active.is_(True),
                )
            )
        return int(turn or 0) + 1, int(count or 0)

    async def checkpoints(
        self, tenant: str, session_id: str, after_turn: int, limit: int
    ) -> list[Checkpoint]:
        """The session's checkpoints after `after_turn`, oldest first."""
        query = (
            select(CheckpointRow)
            .where(
                CheckpointRow.tenant == tenant,
                CheckpointRow.session_id == session_id,
                CheckpointRow.turn > after_turn,
            )
            .order_by(CheckpointRow.turn)
            .limit(limit)
        )
        async with self._db.session() as db:
            return [_to_checkpoint(r) for r in (await db.scalars(query)).all()]

    async def checkpoint(self, tenant: str, session_id: str, checkpoint_id: str) -> Checkpoint:
        """One checkpoint of the session (the latest if `checkpoint_id` is
        empty), or NOT_FOUND."""
        query = select(CheckpointRow).where(
            CheckpointRow.tenant == tenant, CheckpointRow.session_id == session_id
        )
        if checkpoint_id:
            query = query.where(CheckpointRow.id == checkpoint_id)
        async with self._db.session() as db:
            row = await db.scalar(query.order_by(CheckpointRow.turn.desc()).limit(1))
        if row is None:
            what = f"checkpoint {checkpoint_id!r}" if checkpoint_id else "a checkpoint"
            raise NotFound(
                f"session {session_id!r} has no {what}",
                field="checkpoint_id",
                resource="checkpoint",
            )
        return _to_checkpoint(row)

    async def forget_run(self, tenant: str, session_id: str, run_id: str, keep_id: str) -> None:
        """Deactivates what an earlier attempt of `run_id` wrote, but `keep_id`
        (its user message), so a new attempt starts from the last checkpoint."""
        async with self._db.session() as db:
            await db.execute(
                update(MessageRow)
                .where(
                    MessageRow.tenant == tenant,
                    MessageRow.session_id == session_id,
                    MessageRow.run_id == run_id,
                    MessageRow.id != keep_id,
                )
                .values(active=False)
            )

    async def rewind(self, tenant: str, session_id: str, last_position: int) -> int:
        """Deactivates the messages after `last_position`; returns how many."""
        statement = (
            update(MessageRow)
            .where(
                MessageRow.tenant == tenant,
                MessageRow.session_id == session_id,
                MessageRow.position > last_position,
                MessageRow.active.is_(True),
            )
            .values(active=False)
        )
        async with self._db.session() as db:
            return int((await db.execute(statement)).rowcount)  # type: ignore[attr-defined]

    async def fork(
        self, tenant: str, child: Session, source_id: str, last_position: int, ids: list[str]
    ) -> Session:
        """Creates `child` holding copies of the source's active messages up
        to `last_position` (given fresh `ids`, one per message, in order)."""
        await self.create(tenant, child)
        messages = [
            m for m in await self.messages(tenant, source_id) if m.position <= last_position
        ]
        async with self._db.session() as db:
            for message, new_id in zip(messages, ids, strict=False):
                db.add(
                    MessageRow(
                        id=new_id,
                        tenant=tenant,
                        session_id=child.id,
                        position=message.position,
                        role=message.role,
                        content=message.content,
                        tool_calls=[dataclasses.asdict(c) for c in message.tool_calls],
                        tool_call_id=message.tool_call_id,
                        run_id=message.run_id,
                        create_time=message.create_time,
                        active=True,
                    )
                )
        return child

    async def stats(self, tenant: str, session_id: str) -> SessionStats:
        """Message and run counts, token usage and last activity."""
        async with self._db.session() as db:
            await _row(db, tenant, session_id)
            messages = await db.scalar(
                select(func.count()).where(
                    MessageRow.tenant == tenant,
                    MessageRow.session_id == session_id,
                    MessageRow.active.is_(True),
                )
            )
            runs = (
                await db.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(RunRow.input_tokens), 0),
                        func.coalesce(func.sum(RunRow.output_tokens), 0),
                        func.max(RunRow.create_time),
                        func.max(RunRow.end_time),
                    ).where(RunRow.tenant == tenant, RunRow.session_id == session_id)
                )
            ).one()
            last_message = await db.scalar(
                select(func.max(MessageRow.create_time)).where(
                    MessageRow.tenant == tenant, MessageRow.session_id == session_id
                )
            )
        times = [as_utc(t) for t in (runs[3], runs[4], last_message) if t is not None]
        return SessionStats(
            session_id=session_id,
            message_count=int(messages or 0),
            run_count=int(runs[0]),
            input_tokens=int(runs[1]),
            output_tokens=int(runs[2]),
            last_activity_time=max(times) if times else None,
        )


class RunAttemptStale(Exception):
    """The writing attempt of a run is no longer its current one."""


def checkpoint_row(tenant: str, checkpoint: Checkpoint) -> CheckpointRow:
    """The row of a checkpoint (stored with the end of its run)."""
    return CheckpointRow(
        tenant=tenant,
        **{f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)},
    )


async def _row(db: AsyncSession, tenant: str, session_id: str) -> SessionRow:
    row = await db.get(SessionRow, (tenant, session_id))
    if row is None:
        raise NotFound(f"session {session_id!r} not found", resource="session", id=session_id)
    return row


def _conflict(session_id: str) -> EtagMismatch:
    return EtagMismatch(
        f"session {session_id!r} was changed concurrently; get it again and retry", field="etag"
    )


def _to_session(row: SessionRow) -> Session:
    return Session(
        id=row.id,
        spec=SessionSpec(
            agent_id=row.agent_id,
            display_name=row.display_name,
            labels=dict(row.labels),
            metadata=dict(row.metadata_),
        ),
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        parent_session_id=row.parent_session_id,
        parent_checkpoint_id=row.parent_checkpoint_id,
        revision=row.revision,
    )


def _to_message(row: MessageRow) -> Message:
    calls: list[dict[str, Any]] = list(row.tool_calls or [])
    return Message(
        id=row.id,
        session_id=row.session_id,
        role=row.role,
        content=row.content,
        create_time=as_utc(row.create_time),
        position=row.position,
        tool_calls=[ToolCallRecord(**c) for c in calls],
        tool_call_id=row.tool_call_id,
        run_id=row.run_id,
    )


def _to_checkpoint(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        session_id=row.session_id,
        run_id=row.run_id,
        turn=row.turn,
        message_count=row.message_count,
        last_position=row.last_position,
        last_message_id=row.last_message_id,
        state=dict(row.state),
        create_time=as_utc(row.create_time),
    )
