"""The numbers behind the queue gauges (aster_run_queue_depth, ...), read on
SQLite and PostgreSQL; and the refresh loop surviving a database outage."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from aster.server.clock import utcnow
from aster.server.ids import new_id
from aster.server.observability import aster_metrics
from aster.server.runs.executor import RunExecutor
from aster.server.runs.models import Run, RunStatus
from aster.server.sessions.models import Session, SessionSpec
from aster.server.storage import migrate
from aster.server.storage.database import Database
from aster.server.storage.execution_repository import ExecutionQueueStats, ExecutionRepository
from aster.server.storage.run_repository import RunQueueStats, RunRepository
from aster.server.storage.session_repository import SessionRepository
from aster.server.workflows.execution_events import state_changed
from aster.server.workflows.execution_models import Execution, ExecutionState
from tests.conftest import fresh_postgres_database
from tests.processes import free_port

MINUTE = timedelta(minutes=1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A freshly migrated database of each backend, shared with nobody: the
    numbers are database-wide, so a test or server running at the same time
    on the shared test database would change them."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'aster.db'}"
    else:
        postgres_url: str = request.getfixturevalue("postgres_url")
        url = fresh_postgres_database(postgres_url, f"queue_{uuid.uuid4().hex[:8]}")
    database = Database(url)
    await migrate.upgrade(database)
    yield database
    await database.close()
    if request.param == "postgresql":
        admin = make_url(postgres_url).set(drivername="postgresql")
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
        finally:
            await conn.close()


async def new_session(database: Database) -> str:
    now = utcnow()
    created = Session(
        id=new_id("ses"), spec=SessionSpec(agent_id="agt_x"), create_time=now, update_time=now
    )
    return (await SessionRepository(database).create("t1", created)).id


async def queued(runs: RunRepository, session_id: str, minutes_ago: float) -> Run:
    """A QUEUED run created `minutes_ago`, after the session's active run if any."""
    run = Run(
        id=new_id("run"),
        tenant="t1",
        agent_id="agt_x",
        session_id=session_id,
        status=RunStatus.QUEUED,
        input_text="hi",
        create_time=utcnow() - minutes_ago * MINUTE,
    )
    stored, _ = await runs.admit("t1", run, lambda active: active[-1].id if active else "")
    return stored


async def test_run_queue_stats(database: Database) -> None:
    runs = RunRepository(database)
    assert await runs.queue_stats(utcnow()) == RunQueueStats(0, None, 0)
    busy = await new_session(database)
    active = await queued(runs, busy, minutes_ago=30)
    assert await runs.lease(active.id, "w1", utcnow(), 60) is not None
    # Waits for `active`, its session's run: not ready, so not the oldest.
    behind = await queued(runs, busy, minutes_ago=20)
    assert behind.after_run_id == active.id
    ready = await queued(runs, await new_session(database), minutes_ago=10)
    # Leased 5 minutes ago for 1 minute: its worker stopped renewing it.
    lapsed = await queued(runs, await new_session(database), minutes_ago=8)
    assert await runs.lease(lapsed.id, "w2", utcnow() - 5 * MINUTE, 60) is not None
    stats = await runs.queue_stats(utcnow())
    assert (stats.queued, stats.lease_expired) == (2, 1)
    assert stats.oldest_ready == ready.create_time
    # The predecessor ends: the run behind it can start, and is the oldest.
    await runs.update(active.id, status=RunStatus.COMPLETED.value, end_time=utcnow())
    stats = await runs.queue_stats(utcnow())
    assert stats.oldest_ready == behind.create_time
    # The lapsed run is rescued (queued again), the others start.
    rescued, _ = await runs.rescue(utcnow())
    assert rescued == [lapsed.id]
    stats = await runs.queue_stats(utcnow())
    assert (stats.queued, stats.lease_expired) == (3, 0)
    for run_id in (behind.id, ready.id, lapsed.id):
        assert await runs.lease(run_id, "w1", utcnow(), 60) is not None
    assert await runs.queue_stats(utcnow()) == RunQueueStats(0, None, 0)


def execution() -> Execution:
    return Execution(
        id=new_id("exe"),
        tenant="t1",
        workflow_id="wf",
        workflow_version=1,
        state=ExecutionState.PENDING,
        input={},
        create_time=utcnow(),
        definition={"steps": []},
    )


async def test_execution_queue_stats(database: Database) -> None:
    repo = ExecutionRepository(database)
    assert await repo.queue_stats(utcnow()) == ExecutionQueueStats(0, 0)
    ids = []
    for _ in range(4):
        created, _events = await repo.create(execution(), [state_changed(ExecutionState.PENDING)])
        ids.append(created.id)
    assert await repo.lease(ids[0], "w1", utcnow(), 60) is not None
    assert await repo.lease(ids[1], "w2", utcnow() - 5 * MINUTE, 60) is not None
    assert await repo.queue_stats(utcnow()) == ExecutionQueueStats(pending=2, lease_expired=1)
    rescued, _ = await repo.rescue(utcnow(), "w1")
    assert rescued == [ids[1]]
    assert await repo.queue_stats(utcnow()) == ExecutionQueueStats(pending=3, lease_expired=0)


async def test_the_gauges_survive_a_database_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh that cannot reach the database is logged, the loop goes
    on, and the gauges keep their last values."""
    monkeypatch.setattr(aster_metrics, "QUEUE_REFRESH_S", 0.01)
    down = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/aster")
    none = cast(Any, None)
    executor = RunExecutor(RunRepository(down), none, none, none, none, none, none, none, pool=none)
    aster_metrics.RUN_QUEUE_DEPTH.set(7)
    try:
        with capture_logs() as logs:
            loop = asyncio.create_task(
                executor._every(aster_metrics.QUEUE_REFRESH_S, executor._report_queue)
            )

            def failed() -> list[dict[str, Any]]:
                return [log for log in logs if log.get("loop") == "_report_queue"]

            async with asyncio.timeout(20):
                while len(failed()) < 3:  # noqa: ASYNC110 - waits for log lines
                    await asyncio.sleep(0.01)
            assert not loop.done()
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        assert failed()[0]["log_level"] == "warning"
        assert "unavailable" in failed()[0]["error"]
        assert REGISTRY.get_sample_value("aster_run_queue_depth") == 7
    finally:
        aster_metrics.RUN_QUEUE_DEPTH.set(0)
        await down.close()
