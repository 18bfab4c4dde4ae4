"""The only code that reads and writes working memory in SQL."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, NotFound
from aster.server.memory.working_models import Scope, WorkingMemoryEntry, Writer
from aster.server.storage.database import Database
from aster.server.storage.room_tables import RoomRow
from aster.server.storage.run_tables import SessionRow
from aster.server.storage.tables import AgentRow
from aster.server.storage.working_memory_tables import WorkingMemoryRow

Row = WorkingMemoryRow


class WorkingMemoryRepository:
    """Working-memory entries of one database, always scoped by tenant.

    Every read takes `now` and treats entries whose `expire_time` has passed
    as absent; `purge_expired` deletes them for good."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant: str, entry_id: str, now: datetime) -> WorkingMemoryEntry:
        """The unexpired entry, or NOT_FOUND (also once the agent, session or
        room of its scope is deleted: `purge_orphans` removes it later)."""
        query = select(Row).where(Row.tenant == tenant, Row.id == entry_id, ~_orphaned())
        async with self._db.session() as session:
            row = (await session.scalars(query)).first()
            entry = _to_entry(row) if row is not None else None
        if entry is None or entry.expired(now):
            raise not_found(entry_id)
        return entry

    async def find(
        self, tenant: str, scope: Scope, key: str, now: datetime
    ) -> WorkingMemoryEntry | None:
        """The unexpired entry of `scope` under `key`, if any."""
        query = select(Row).where(*_in_scope(tenant, scope), Row.key == key, _alive(now))
        async with self._db.session() as session:
            row = (await session.scalars(query)).first()
            return _to_entry(row) if row is not None else None

    async def insert(
        self, tenant: str, entry: WorkingMemoryEntry, now: datetime
    ) -> WorkingMemoryEntry:
        """Stores a new entry, first dropping an expired one under the same
        key; ALREADY_EXISTS if the scope has the key (unexpired)."""
        row = Row(tenant=tenant, id=entry.id)
        _write(row, entry)
        try:
            async with self._db.session() as session:
                await session.execute(
                    delete(Row).where(
                        *_in_scope(tenant, entry.scope),
                        Row.key == entry.key,
                        Row.expire_time.is_not(None),
                        Row.expire_time <= now,
                    )
                )
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(
                f"key {entry.key!r} already exists in the working memory of "
                f"{entry.scope.describe()}",
                field="entry.key",
            ) from None
        return entry

    async def replace(
        self,
        tenant: str,
        entry: WorkingMemoryEntry,
        expected_revision: int | None,
        now: datetime,
    ) -> WorkingMemoryEntry:
        """Writes `entry`'s value, TTL, expiry and writer over the stored,
        unexpired entry as its next revision. With `expected_revision`, only
        over that revision (ABORTED if it changed); without, whatever the
        stored revision (the last writer wins). NOT_FOUND if it is gone or
        expired."""
        conditions = [Row.tenant == tenant, Row.id == entry.id, _alive(now)]
        if expected_revision is not None:
            conditions.append(Row.revision == expected_revision)
        statement = (
            update(Row)
            .where(*conditions)
            .values(
                value_json=_dump(entry.value),
                ttl_seconds=entry.ttl_seconds,
                expire_time=entry.expire_time,
                writer=dataclasses.asdict(entry.writer),
                update_time=entry.update_time,
                revision=Row.revision + 1,
            )
            .returning(Row.revision)
        )
        async with self._db.session() as session:
            revision = (await session.execute(statement)).scalar()
            if revision is None:
                await _explain_miss(session, tenant, entry.id, now)
        return dataclasses.replace(entry, revision=int(revision))

    async def delete(
        self, tenant: str, entry_id: str, expected_revision: int | None, now: datetime
    ) -> None:
        """Deletes the unexpired entry; with `expected_revision`, only that
        revision (ABORTED otherwise). NOT_FOUND if it is gone or expired."""
        statement = delete(Row).where(Row.tenant == tenant, Row.id == entry_id, _alive(now))
        if expected_revision is not None:
            statement = statement.where(Row.revision == expected_revision)
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                await _explain_miss(session, tenant, entry_id, now)

    async def list_page(
        self,
        tenant: str,
        scope: Scope,
        prefix: str,
        after_key: str | None,
        limit: int,
        now: datetime,
    ) -> tuple[list[WorkingMemoryEntry], bool]:
        """Up to `limit` unexpired entries of `scope` whose key starts with
        `prefix` and sorts after `after_key`, by key, and whether more follow."""
        query = select(Row).where(*_in_scope(tenant, scope), _alive(now))
        if prefix:
            # The key column sorts by code point on both backends, so the
            # keys starting with `prefix` are one range of the unique index.
            query = query.where(Row.key >= prefix, Row.key < _after_prefix(prefix))
        if after_key is not None:
            query = query.where(Row.key > after_key)
        query = query.order_by(Row.key).limit(limit + 1)
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return [_to_entry(r) for r in rows[:limit]], len(rows) > limit

    async def clear(self, tenant: str, scope: Scope, now: datetime) -> int:
        """Deletes every entry of `scope`; returns how many were unexpired."""
        async with self._db.session() as session:
            result = await session.execute(
                delete(Row).where(*_in_scope(tenant, scope), _alive(now))
            )
            await session.execute(delete(Row).where(*_in_scope(tenant, scope)))
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def purge_expired(self, now: datetime, limit: int = 1000) -> int:
        """Deletes up to `limit` expired entries of every tenant; returns how many."""
        victims = (
            select(Row.tenant, Row.id)
            .where(Row.expire_time.is_not(None), Row.expire_time <= now)
            .limit(limit)
        )
        async with self._db.session() as session:
            keys = (await session.execute(victims)).all()
            removed = 0
            for tenant, entry_id in keys:
                result = await session.execute(
                    delete(Row).where(
                        Row.tenant == tenant, Row.id == entry_id, Row.expire_time <= now
                    )
                )
                removed += int(result.rowcount)  # type: ignore[attr-defined]
        return removed

    async def purge_orphans(self, limit: int = 1000) -> int:
        """Deletes up to `limit` entries whose scope's agent, session or room
        no longer exists (it was deleted); returns how many."""
        victims = select(Row.tenant, Row.id).where(_orphaned()).limit(limit)
        async with self._db.session() as session:
            keys = (await session.execute(victims)).all()
            for tenant, entry_id in keys:
                await session.execute(delete(Row).where(Row.tenant == tenant, Row.id == entry_id))
        return len(keys)


def not_found(entry_id: str) -> NotFound:
    """NOT_FOUND for a missing, expired or other tenant's entry."""
    return NotFound(
        f"working memory entry {entry_id!r} not found", resource="working_memory_entry", id=entry_id
    )


async def _explain_miss(session: Any, tenant: str, entry_id: str, now: datetime) -> NoReturn:
    row = await session.get(Row, (tenant, entry_id))
    if row is None or _to_entry(row).expired(now):
        raise not_found(entry_id)
    raise EtagMismatch(
        f"working memory entry {entry_id!r} was changed concurrently; get it again and retry",
        field="etag",
    )


def _in_scope(tenant: str, scope: Scope) -> list[ColumnElement[bool]]:
    return [
        Row.tenant == tenant,
        Row.agent_id == scope.agent_id,
        Row.session_id == scope.session_id,
        Row.room_id == scope.room_id,
    ]


def _orphaned() -> ColumnElement[bool]:
    """Entries naming an agent, session or room that does not exist."""
    gone: ColumnElement[bool] = or_(
        and_(
            Row.agent_id != "",
            ~select(AgentRow.id)
            .where(AgentRow.tenant == Row.tenant, AgentRow.id == Row.agent_id)
            .exists(),
        ),
        and_(
            Row.session_id != "",
            ~select(SessionRow.id)
            .where(SessionRow.tenant == Row.tenant, SessionRow.id == Row.session_id)
            .exists(),
        ),
        and_(
            Row.room_id != "",
            ~select(RoomRow.id)
            .where(RoomRow.tenant == Row.tenant, RoomRow.id == Row.room_id)
            .exists(),
        ),
    )
    return gone


def _after_prefix(prefix: str) -> str:
    """The least string above every string that starts with `prefix` (keys
    are ASCII, so the last character is never the largest code point)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _alive(now: datetime) -> ColumnElement[bool]:
    return or_(Row.expire_time.is_(None), and_(Row.expire_time > now))


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _write(row: WorkingMemoryRow, entry: WorkingMemoryEntry) -> None:
    row.agent_id = entry.scope.agent_id
    row.session_id = entry.scope.session_id
    row.room_id = entry.scope.room_id
    row.key = entry.key
    row.value_json = _dump(entry.value)
    row.ttl_seconds = entry.ttl_seconds
    row.expire_time = entry.expire_time
    row.writer = dataclasses.asdict(entry.writer)
    row.create_time = entry.create_time
    row.update_time = entry.update_time
    row.revision = entry.revision


def _to_entry(row: WorkingMemoryRow) -> WorkingMemoryEntry:
    return WorkingMemoryEntry(
        id=row.id,
        scope=Scope(row.agent_id, row.session_id, row.room_id),
        key=row.key,
        value=json.loads(row.value_json),
        ttl_seconds=row.ttl_seconds,
        expire_time=as_utc(row.expire_time) if row.expire_time is not None else None,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        writer=Writer(**row.writer),
        revision=row.revision,
    )
