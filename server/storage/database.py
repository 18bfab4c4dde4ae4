"""The async engine and sessions, for SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from aster.server.errors import Unavailable

_log = structlog.get_logger("aster.storage")


class Database:
    """Owns the engine; hands out sessions that turn connection failures into
    UNAVAILABLE errors."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = "postgresql" if url.startswith("postgresql") else "sqlite"
        self.engine = _create_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed when the block exits cleanly
        and rolled back otherwise. Ending the transaction is shielded from
        cancellation: a task cancelled mid-transaction (a run or execution
        being stopped) must not leave its connection holding locks, which on
        SQLite would block every other writer."""
        try:
            session = self._sessions()
            committed = False
            try:
                yield session
                committed = True
            finally:
                ending = asyncio.ensure_future(_end(session, committed))
                try:
                    await asyncio.shield(ending)
                except asyncio.CancelledError:
                    ending.add_done_callback(_report_unawaited_end)
                    raise
        except exc.DBAPIError as err:
            if err.connection_invalidated or self._is_outage(err):
                raise Unavailable(f"the database is unavailable: {err.orig!s:.200}") from err
            raise
        except OSError as err:
            raise Unavailable(f"the database is unavailable: {err}") from err

    def _is_outage(self, err: exc.DBAPIError) -> bool:
        if isinstance(err.orig, OSError):
            return True
        if self.backend == "sqlite":
            return "database is locked" in str(err.orig)
        return isinstance(err, exc.OperationalError | exc.InterfaceError)

    async def ping(self) -> bool:
        """True if the database answers a trivial query."""
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()


def _report_unawaited_end(ending: asyncio.Future[None]) -> None:
    """Logs how a transaction whose task was cancelled while it ended
    finished, since nobody awaits that outcome any more."""
    if ending.cancelled():
        return
    error = ending.exception()
    if error is not None:
        _log.warning("ending the transaction of a cancelled task failed", error=str(error))


async def _end(session: AsyncSession, commit: bool) -> None:
    try:
        if commit:
            await session.commit()
        else:
            await session.rollback()
    finally:
        await session.close()


def _create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "invalidate", _roll_back_in_driver_thread)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets several worker processes read while one writes; busy_timeout
    # makes writers wait for each other instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _roll_back_in_driver_thread(dbapi_connection: Any, _record: Any, _error: Any) -> None:
    """Queues a rollback on an invalidated SQLite connection's own thread.

    SQLAlchemy invalidates a connection whose statement was interrupted
    (a task cancelled mid-transaction) and closes it in the background. When
    the task is cancelled again during that close, aiosqlite can drop its
    sqlite3 connection without closing it, and an open write transaction then
    keeps the database locked for every other writer. aiosqlite runs one
    thread per connection that executes queued calls in order, so a rollback
    queued now runs right after the interrupted statement, whatever happens
    to the close. (This reaches into aiosqlite's queue: it has no public way
    to do it.)"""
    driver = getattr(dbapi_connection, "_connection", None)
    sqlite_connection = getattr(driver, "_connection", None)
    calls = getattr(driver, "_tx", None)
    if sqlite_connection is None or calls is None:
        return
    calls.put_nowait((None, sqlite_connection.rollback))
