"""Runs and their events on SQLite and PostgreSQL: admission, recovery, pruning."""

from __future__ import annotations

from datetime import timedelta

import pytest

from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition, NotFound
from aster.server.ids import new_id
from aster.server.runs.models import Run, RunEvent, RunStatus
from aster.server.sessions.models import Session, SessionSpec
from aster.server.storage.database import Database
from aster.server.storage.run_repository import RunRepository
from aster.server.storage.session_repository import SessionRepository


async def session(database: Database, tenant: str = "t1") -> Session:
    now = utcnow()
    created = Session(
        id=new_id("ses"), spec=SessionSpec(agent_id="agt_x"), create_time=now, update_time=now
    )
    return await SessionRepository(database).create(tenant, created)


def run(session_id: str, tenant: str = "t1", **fields: object) -> Run:
    values: dict[str, object] = {
        "id": new_id("run"),
        "tenant": tenant,
        "agent_id": "agt_x",
        "session_id": session_id,
        "status": RunStatus.QUEUED,
        "input_text": "hi",
        "create_time": utcnow(),
        **fields,
    }
    return Run(**values)  # type: ignore[arg-type]


def no_wait(active: list[Run]) -> str:
    return active[-1].id if active else ""


async def test_admission_sees_active_runs_and_can_refuse(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    first, seen = await runs.admit("t1", run(s.id), no_wait)
    assert (first.after_run_id, seen) == ("", [])
    second, seen = await runs.admit("t1", run(s.id), no_wait)
    assert second.after_run_id == first.id
    assert [r.id for r in seen] == [first.id]

    def refuse(active: list[Run]) -> str:
        raise FailedPrecondition("busy")

    with pytest.raises(FailedPrecondition):
        await runs.admit("t1", run(s.id), refuse)
    assert len(await runs.active_in_session("t1", s.id)) == 2
    with pytest.raises(NotFound):
        await runs.admit("t1", run("ses_missing"), no_wait)
    with pytest.raises(NotFound):  # another tenant's session
        await runs.admit("t2", run(s.id, tenant="t2"), no_wait)
    with pytest.raises(NotFound):
        await runs.get("t2", first.id)


async def test_recovery_fails_foreground_and_requeues_background(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    foreground, _ = await runs.admit("t1", run(s.id), lambda _: "")
    background, _ = await runs.admit("t1", run(s.id, background=True), lambda _: "")
    for item in (foreground, background):
        assert await runs.start(item.id, utcnow())
    assert await runs.recover(utcnow()) == 1
    failed = await runs.get("t1", foreground.id)
    assert (failed.status, failed.error) == (RunStatus.FAILED, "server restarted")
    again = await runs.get("t1", background.id)
    assert (again.status, again.attempt) == (RunStatus.QUEUED, 2)
    assert [r.id for r in await runs.queued()] == [background.id]


async def test_events_replay_in_order_and_expire(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    old, _ = await runs.admit("t1", run(s.id), lambda _: "")
    new, _ = await runs.admit("t1", run(s.id), lambda _: "")
    for item in (old, new):
        await runs.append_events(
            [
                RunEvent(item.id, s.id, seq, 1, "text_delta", {"delta": str(seq)}, utcnow())
                for seq in range(1, 6)
            ]
        )
    assert [e.seq for e in await runs.events(old.id, s.id, 2, 2)] == [3, 4]
    assert (await runs.get("t1", old.id)).last_seq == 5
    await runs.update(
        old.id, status=RunStatus.COMPLETED.value, end_time=utcnow() - timedelta(days=2)
    )
    await runs.update(new.id, status=RunStatus.COMPLETED.value, end_time=utcnow())
    assert await runs.prune_events(utcnow() - timedelta(days=1)) == 5
    assert await runs.events(old.id, s.id, 0, 100) == []
    assert len(await runs.events(new.id, s.id, 0, 100)) == 5


async def test_cancelling_a_queued_run_only_once(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    queued, _ = await runs.admit("t1", run(s.id), lambda _: "")
    assert await runs.cancel_queued(queued.id, utcnow())
    assert not await runs.cancel_queued(queued.id, utcnow())
    assert not await runs.start(queued.id, utcnow())
    assert (await runs.get("t1", queued.id)).status is RunStatus.CANCELLED
