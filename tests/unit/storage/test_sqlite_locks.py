"""An interrupted SQLite transaction never keeps the database locked.

When a task is cancelled mid-transaction, SQLAlchemy invalidates its
connection and closes it in the background; a second cancel during that
close can make aiosqlite drop its sqlite3 connection without closing it
(seen when a workflow's parallel branches were cancelled). The database
then stayed locked for every other writer. The fix queues a rollback on
the connection's own thread as soon as it is invalidated."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text

from aster.server.storage.database import Database


def _drop_without_closing(self: aiosqlite.Connection) -> Any:
    """What aiosqlite ends up doing in that race: it forgets the sqlite3
    connection (so nothing closes it) and stops its thread."""

    async def close() -> None:
        self._connection = None
        self.stop()

    return close()


async def test_an_invalidated_connection_does_not_keep_its_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'locks.db'}")
    try:
        async with db.session() as session:
            await session.execute(text("CREATE TABLE t (x INTEGER)"))
        monkeypatch.setattr(aiosqlite.Connection, "close", _drop_without_closing)
        async with db.engine.connect() as holder:
            await holder.execute(text("INSERT INTO t VALUES (1)"))  # holds the write lock
            kept = (await holder.get_raw_connection()).driver_connection
            await holder.invalidate()
        monkeypatch.undo()
        # The dropped sqlite3 connection is still alive (a traceback or a
        # cursor can keep it so); only a rollback frees the lock.
        assert kept is not None
        other = Database(f"sqlite+aiosqlite:///{tmp_path / 'locks.db'}")
        try:
            started = time.monotonic()
            async with asyncio.timeout(10):
                await _write_with_short_busy_wait(other)
            assert time.monotonic() - started < 5
        finally:
            await other.close()
    finally:
        await db.close()


async def _write_with_short_busy_wait(db: Database) -> None:
    async with db.session() as session:
        await session.execute(text("PRAGMA busy_timeout=3000"))
        await session.execute(text("INSERT INTO t VALUES (2)"))
