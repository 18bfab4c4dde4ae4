"""The only code that reads and writes rooms, members, messages and room
runs in SQL. Every change that has an event in the room's stream stores the
event in the same transaction (`stream_repository.append_in`); the caller
publishes the returned events."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, FailedPrecondition, NotFound
from aster.server.pagination import Cursor
from aster.server.rooms.models import (
    Member,
    Room,
    RoomFilter,
    RoomMessage,
    RoomRole,
    RoomRun,
    RoomSpec,
    RoomStrategy,
    Speaker,
    stream_name,
)
from aster.server.runs.models import ACTIVE_STATUSES, MultitaskStrategy, RunStatus
from aster.server.storage.database import Database
from aster.server.storage.room_tables import RoomMemberRow, RoomMessageRow, RoomRow, RoomRunRow
from aster.server.storage.stream_repository import NewEvent, append_in, delete_in
from aster.server.streams.models import StreamEvent

R = TypeVar("R")

_ACTIVE = [s.value for s in ACTIVE_STATUSES]


class RoomRepository:
    """Rooms of one database, always scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # Rooms ----------------------------------------------------------------

    async def create(
        self, tenant: str, room: Room, events: Sequence[NewEvent]
    ) -> list[StreamEvent]:
        """Inserts `room` with its members (`room.spec.members`) and their
        join events; ALREADY_EXISTS if the id is taken in the tenant."""
        row = RoomRow(
            tenant=tenant,
            id=room.id,
            display_name=room.spec.display_name,
            double_text_policy=room.spec.double_text_policy.value,
            labels=dict(room.spec.labels),
            metadata_=room.spec.metadata,
            create_time=room.create_time,
            update_time=room.update_time,
            revision=room.revision,
        )
        try:
            async with self._db.session() as db:
                db.add(row)
                await db.flush()
                for position, member in enumerate(room.spec.members):
                    db.add(_member_row(tenant, room.id, member, position))
                await db.flush()
                return await append_in(db, tenant, stream_name(room.id), events)
        except IntegrityError:
            raise AlreadyExists(f"room {room.id!r} already exists", field="room_id") from None

    async def get(self, tenant: str, room_id: str) -> Room:
        """The room with its members, or NOT_FOUND."""
        async with self._db.session() as db:
            row = await db.get(RoomRow, (tenant, room_id))
            if row is None:
                raise room_not_found(room_id)
            members = await _members(db, tenant, room_id)
            return _to_room(row, members)

    async def list_page(
        self, tenant: str, where: RoomFilter, after: Cursor | None, limit: int
    ) -> tuple[list[Room], bool]:
        """Up to `limit` rooms after `after`, oldest first, and whether more follow."""
        query = select(RoomRow).where(RoomRow.tenant == tenant, *_conditions(where))
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    RoomRow.create_time > created,
                    and_(RoomRow.create_time == created, RoomRow.id > after.last_id),
                )
            )
        query = query.order_by(RoomRow.create_time, RoomRow.id).limit(limit + 1)
        async with self._db.session() as db:
            rows = (await db.scalars(query)).all()[: limit + 1]
            rooms = [_to_room(r, await _members(db, tenant, r.id)) for r in rows[:limit]]
        return rooms, len(rows) > limit

    async def delete(self, tenant: str, room_id: str, expected_revision: int | None) -> None:
        """Deletes the room, its members, messages, runs and stream."""
        statement = delete(RoomRow).where(RoomRow.tenant == tenant, RoomRow.id == room_id)
        if expected_revision is not None:
            statement = statement.where(RoomRow.revision == expected_revision)
        async with self._db.session() as db:
            result = await db.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                if await db.get(RoomRow, (tenant, room_id)) is None:
                    raise room_not_found(room_id)
                raise EtagMismatch(
                    f"room {room_id!r} was changed concurrently; get it again and retry",
                    field="etag",
                )
            for table in (RoomMemberRow, RoomMessageRow, RoomRunRow):
                await db.execute(
                    delete(table).where(table.tenant == tenant, table.room_id == room_id)
                )
            await delete_in(db, tenant, stream_name(room_id))

    # Members ---------------------------------------------------------------

    async def add_member(
        self, tenant: str, room_id: str, member: Member, event: NewEvent
    ) -> list[StreamEvent]:
        """Adds `member` (ALREADY_EXISTS if it is one) with its join event."""
        try:
            async with self._db.session() as db:
                room = await _bump(db, tenant, room_id, member.join_time)
                position = await db.scalar(
                    select(func.coalesce(func.max(RoomMemberRow.position), -1)).where(
                        RoomMemberRow.tenant == tenant, RoomMemberRow.room_id == room.id
                    )
                )
                db.add(_member_row(tenant, room_id, member, int(position or 0) + 1))
                await db.flush()
                return await append_in(db, tenant, stream_name(room_id), [event])
        except IntegrityError:
            raise AlreadyExists(
                f"{member.who.key!r} is already a member of room {room_id!r}",
                field="agent_id" if member.who.is_agent else "participant_id",
            ) from None

    async def remove_member(
        self, tenant: str, room_id: str, who: Speaker, now: datetime, event: NewEvent
    ) -> list[StreamEvent]:
        """Removes a member (NOT_FOUND if it is none) with its leave event."""
        kind, member_id = _identity(who)
        async with self._db.session() as db:
            await _bump(db, tenant, room_id, now)
            result = await db.execute(
                delete(RoomMemberRow).where(
                    RoomMemberRow.tenant == tenant,
                    RoomMemberRow.room_id == room_id,
                    RoomMemberRow.kind == kind,
                    RoomMemberRow.member_id == member_id,
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(
                    f"{member_id!r} is not a member of room {room_id!r}",
                    field="agent_id" if who.is_agent else "participant_id",
                    resource="room_member",
                    id=member_id,
                )
            return await append_in(db, tenant, stream_name(room_id), [event])

    async def members_page(
        self, tenant: str, room_id: str, after_position: int, limit: int
    ) -> tuple[list[tuple[int, Member]], bool]:
        """Up to `limit` members after position `after_position`, in joining order."""
        rows, more = await self._page(
            tenant,
            room_id,
            select(RoomMemberRow)
            .where(
                RoomMemberRow.tenant == tenant,
                RoomMemberRow.room_id == room_id,
                RoomMemberRow.position > after_position,
            )
            .order_by(RoomMemberRow.position),
            limit,
        )
        return [(r.position, _to_member(r)) for r in rows], more

    # Messages --------------------------------------------------------------

    async def add_message(
        self, tenant: str, message: RoomMessage, event_data: dict[str, object]
    ) -> tuple[RoomMessage, list[StreamEvent]]:
        """Stores `message` and its `message` event; the message takes the
        event's seq."""
        async with self._db.session() as db:
            events = await append_in(
                db, tenant, stream_name(message.room_id), [("message", dict(event_data))]
            )
            stored = dataclasses.replace(
                message, seq=events[0].seq, create_time=events[0].create_time
            )
            db.add(
                RoomMessageRow(
                    tenant=tenant,
                    room_id=message.room_id,
                    seq=stored.seq,
                    agent_id=message.speaker.agent_id,
                    participant_id=message.speaker.participant_id,
                    text=message.text,
                    mentions=list(message.mentions),
                    room_run_id=message.room_run_id,
                    create_time=stored.create_time,
                )
            )
        return stored, events

    async def messages_page(
        self, tenant: str, room_id: str, after_seq: int, limit: int
    ) -> tuple[list[RoomMessage], bool]:
        """Up to `limit` messages with seq > `after_seq`, oldest first."""
        rows, more = await self._page(
            tenant,
            room_id,
            select(RoomMessageRow)
            .where(
                RoomMessageRow.tenant == tenant,
                RoomMessageRow.room_id == room_id,
                RoomMessageRow.seq > after_seq,
            )
            .order_by(RoomMessageRow.seq),
            limit,
        )
        return [_to_message(r) for r in rows], more

    async def _page(
        self, tenant: str, room_id: str, query: Select[R], limit: int
    ) -> tuple[Sequence[R], bool]:
        """Up to `limit` rows of `query` (and whether more follow) in a room
        of `tenant`, or NOT_FOUND for the room."""
        async with self._db.session() as db:
            if await db.get(RoomRow, (tenant, room_id)) is None:
                raise room_not_found(room_id)
            rows = (await db.scalars(query.limit(limit + 1))).all()
        return rows[:limit], len(rows) > limit

    async def recent_messages(self, tenant: str, room_id: str, limit: int) -> list[RoomMessage]:
        """The last `limit` messages of the room, oldest first."""
        async with self._db.session() as db:
            rows = (
                await db.scalars(
                    select(RoomMessageRow)
                    .where(RoomMessageRow.tenant == tenant, RoomMessageRow.room_id == room_id)
                    .order_by(RoomMessageRow.seq.desc())
                    .limit(limit)
                )
            ).all()
        return [_to_message(r) for r in reversed(rows)]

    # Room runs -------------------------------------------------------------

    async def create_run(
        self, tenant: str, run: RoomRun, lease_s: float, event: NewEvent
    ) -> list[StreamEvent]:
        """Stores a new RUNNING run, leased by `run.owner`, with its event.
        FAILED_PRECONDITION if the room has an active run: a unique partial
        index makes this check atomic across concurrent callers and replicas."""
        try:
            return await self._insert_run(tenant, run, lease_s, event)
        except IntegrityError:
            active = await self.active_run(tenant, run.room_id)
            which = f" ({active.id})" if active is not None else ""
            raise FailedPrecondition(
                f"room {run.room_id!r} already has a collaboration running{which}",
                field="room_id",
            ) from None

    async def _insert_run(
        self, tenant: str, run: RoomRun, lease_s: float, event: NewEvent
    ) -> list[StreamEvent]:
        async with self._db.session() as db:
            db.add(
                RoomRunRow(
                    tenant=tenant,
                    id=run.id,
                    room_id=run.room_id,
                    task=run.task,
                    strategy=run.strategy.value,
                    max_turns=run.max_turns,
                    stop_condition=run.stop_condition,
                    status=run.status.value,
                    turns=0,
                    input_tokens=0,
                    output_tokens=0,
                    error="",
                    result="",
                    owner=run.owner,
                    lease_expires=run.create_time + timedelta(seconds=lease_s),
                    create_time=run.create_time,
                )
            )
            await db.flush()
            return await append_in(db, tenant, stream_name(run.room_id), [event])

    async def get_run(self, tenant: str, room_id: str, run_id: str) -> RoomRun:
        """The run, or NOT_FOUND."""
        async with self._db.session() as db:
            row = await db.get(RoomRunRow, (tenant, run_id))
            if row is None or row.room_id != room_id:
                raise NotFound(
                    f"room run {run_id!r} not found in room {room_id!r}",
                    resource="room_run",
                    id=run_id,
                )
            return _to_run(row)

    async def active_run(self, tenant: str, room_id: str) -> RoomRun | None:
        """The room's collaboration still running, if any."""
        async with self._db.session() as db:
            row = await db.scalar(
                select(RoomRunRow)
                .where(
                    RoomRunRow.tenant == tenant,
                    RoomRunRow.room_id == room_id,
                    RoomRunRow.status.in_(_ACTIVE),
                )
                .limit(1)
            )
            return _to_run(row) if row is not None else None

    async def update_run(
        self, tenant: str, run: RoomRun, event: NewEvent | None
    ) -> list[StreamEvent] | None:
        """Writes the run's progress (and its event) if it is still active;
        None when it had already ended (someone cancelled it meanwhile)."""
        async with self._db.session() as db:
            result = await db.execute(
                update(RoomRunRow)
                .where(
                    RoomRunRow.tenant == tenant,
                    RoomRunRow.id == run.id,
                    RoomRunRow.status.in_(_ACTIVE),
                )
                .values(
                    status=run.status.value,
                    turns=run.turns,
                    input_tokens=run.input_tokens,
                    output_tokens=run.output_tokens,
                    error=run.error,
                    result=run.result,
                    end_time=run.end_time,
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                return None
            if event is None:
                return []
            return await append_in(db, tenant, stream_name(run.room_id), [event])

    async def renew(self, owner: str, run_ids: Sequence[str], until: datetime) -> None:
        """Extends the leases `owner` holds on active runs."""
        if not run_ids:
            return
        async with self._db.session() as db:
            await db.execute(
                update(RoomRunRow)
                .where(
                    RoomRunRow.owner == owner,
                    RoomRunRow.id.in_(list(run_ids)),
                    RoomRunRow.status.in_(_ACTIVE),
                )
                .values(lease_expires=until)
            )

    async def lapsed_runs(self, now: datetime) -> list[tuple[str, RoomRun]]:
        """Active runs whose replica stopped renewing their lease, by tenant."""
        async with self._db.session() as db:
            rows = (
                await db.scalars(
                    select(RoomRunRow).where(
                        RoomRunRow.status.in_(_ACTIVE), RoomRunRow.lease_expires < now
                    )
                )
            ).all()
            return [(r.tenant, _to_run(r)) for r in rows]


def room_not_found(room_id: str) -> NotFound:
    """The error of an unknown room (or another tenant's)."""
    return NotFound(f"room {room_id!r} not found", resource="room", id=room_id)


async def _bump(db: AsyncSession, tenant: str, room_id: str, now: datetime | None) -> RoomRow:
    """The room's row, its revision bumped (membership is part of the room)."""
    row = await db.get(RoomRow, (tenant, room_id), with_for_update=True)
    if row is None:
        raise room_not_found(room_id)
    row.revision += 1
    if now is not None:
        row.update_time = now
    return row


def _identity(who: Speaker) -> tuple[str, str]:
    return ("agent", who.agent_id) if who.is_agent else ("participant", who.participant_id)


def _member_row(tenant: str, room_id: str, member: Member, position: int) -> RoomMemberRow:
    kind, member_id = _identity(member.who)
    return RoomMemberRow(
        tenant=tenant,
        room_id=room_id,
        kind=kind,
        member_id=member_id,
        role=member.role.value,
        position=position,
        join_time=member.join_time,
    )


async def _members(db: AsyncSession, tenant: str, room_id: str) -> list[Member]:
    rows = await db.scalars(
        select(RoomMemberRow)
        .where(RoomMemberRow.tenant == tenant, RoomMemberRow.room_id == room_id)
        .order_by(RoomMemberRow.position)
    )
    return [_to_member(r) for r in rows]


def _to_member(row: RoomMemberRow) -> Member:
    who = Speaker(agent_id=row.member_id) if row.kind == "agent" else Speaker("", row.member_id)
    return Member(who=who, role=RoomRole(row.role), join_time=as_utc(row.join_time))


def _to_room(row: RoomRow, members: list[Member]) -> Room:
    spec = RoomSpec(
        display_name=row.display_name,
        members=members,
        double_text_policy=MultitaskStrategy(row.double_text_policy),
        labels=dict(row.labels),
        metadata=dict(row.metadata_),
    )
    return Room(
        id=row.id,
        spec=spec,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        revision=row.revision,
    )


def _to_message(row: RoomMessageRow) -> RoomMessage:
    return RoomMessage(
        room_id=row.room_id,
        seq=row.seq,
        speaker=Speaker(agent_id=row.agent_id, participant_id=row.participant_id),
        text=row.text,
        mentions=tuple(row.mentions),
        room_run_id=row.room_run_id,
        create_time=as_utc(row.create_time),
    )


def _to_run(row: RoomRunRow) -> RoomRun:
    return RoomRun(
        id=row.id,
        room_id=row.room_id,
        task=row.task,
        strategy=RoomStrategy(row.strategy),
        max_turns=row.max_turns,
        stop_condition=row.stop_condition,
        status=RunStatus(row.status),
        create_time=as_utc(row.create_time),
        turns=row.turns,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        error=row.error,
        result=row.result,
        owner=row.owner,
        end_time=as_utc(row.end_time) if row.end_time else None,
    )


def _conditions(where: RoomFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for key, value in where.labels_equal:
        conditions.append(RoomRow.labels[key].as_string() == value)
    for key in where.labels_present:
        conditions.append(RoomRow.labels[key].as_string().is_not(None))
    return conditions
