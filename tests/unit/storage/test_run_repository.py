"""Runs and their events on SQLite and PostgreSQL: admission, recovery, pruning."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition, NotFound
from aster.server.ids import new_id
from aster.server.runs.models import Run, RunEvent, RunStatus
from aster.server.sessions.models import Message, Session, SessionSpec
from aster.server.storage.database import Database
from aster.server.storage.run_repository import RunRepository, requeue_lapsed
from aster.server.storage.session_repository import RunAttemptStale, SessionRepository


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


async def test_leases_rescue_and_fencing(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    queued, _ = await runs.admit("t1", run(s.id), lambda _: "")
    leased = await runs.lease(queued.id, "w1", utcnow(), 10)
    assert leased is not None and leased.status is RunStatus.RUNNING
    assert leased.lease_owner == "w1"
    assert await runs.lease(queued.id, "w2", utcnow(), 10) is None
    assert await runs.renew("w1", [queued.id], utcnow(), 10) == {queued.id}
    assert await runs.renew("w2", [queued.id], utcnow(), 10) == set()
    # w1 stalls: its lease lapses and another worker queues the run again as
    # attempt 2 (w1 itself, alive but late, does not).
    assert await runs.rescue(utcnow() + timedelta(seconds=11), "w1") == ([], [])
    assert await runs.rescue(utcnow() + timedelta(seconds=11), "w2") == ([queued.id], [])
    requeued = await runs.get("t1", queued.id)
    assert (requeued.status, requeued.attempt) == (RunStatus.QUEUED, 2)
    taken = await runs.claim("w2", utcnow(), 10, 10)
    assert [r.id for r in taken] == [queued.id]
    # The zombie (attempt 1) can neither write events nor finish the run.
    zombie = RunEvent(queued.id, s.id, 1, 1, "text_delta", {"delta": "x"}, utcnow())
    assert await runs.append_events([zombie]) == {(queued.id, 1)}
    assert not await runs.finish(queued.id, zombie, status=RunStatus.COMPLETED.value)
    fresh = RunEvent(queued.id, s.id, 1, 2, "run_retry", {"attempt": 2}, utcnow())
    assert await runs.append_events([fresh]) == set()
    last = RunEvent(queued.id, s.id, 2, 2, "run_finished", {"status": "COMPLETED"}, utcnow())
    assert await runs.finish(queued.id, last, status=RunStatus.COMPLETED.value)
    assert [(e.seq, e.attempt) for e in await runs.events(queued.id, s.id, 0, 10)] == [
        (1, 2),
        (2, 2),
    ]


async def test_claim_waits_for_the_predecessor(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    first, _ = await runs.admit("t1", run(s.id), lambda _: "")
    second, _ = await runs.admit("t1", run(s.id), no_wait)
    assert second.after_run_id == first.id
    assert [r.id for r in await runs.claim("w", utcnow(), 10, 10)] == [first.id]
    assert await runs.claim("w", utcnow(), 10, 10) == []
    done = RunEvent(first.id, s.id, 1, 1, "run_finished", {"status": "COMPLETED"}, utcnow())
    assert await runs.finish(first.id, done, status=RunStatus.COMPLETED.value)
    assert [r.id for r in await runs.claim("w", utcnow(), 10, 10)] == [second.id]


async def test_events_replay_in_order_and_expire(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    old, _ = await runs.admit("t1", run(s.id), lambda _: "")
    new, _ = await runs.admit("t1", run(s.id), lambda _: "")
    for item in (old, new):
        await runs.lease(item.id, "w", utcnow(), 10)
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
    assert await runs.cancel_unstarted(queued.id, "w", utcnow())
    assert not await runs.cancel_unstarted(queued.id, "w", utcnow())
    assert await runs.lease(queued.id, "w", utcnow(), 10) is None
    assert (await runs.get("t1", queued.id)).status is RunStatus.CANCELLED


async def test_a_run_that_keeps_losing_its_worker_is_given_up(database: Database) -> None:
    runs = RunRepository(database)
    s = await session(database)
    queued, _ = await runs.admit("t1", run(s.id), lambda _: "")
    later = utcnow() + timedelta(seconds=11)
    assert await runs.lease(queued.id, "w1", utcnow(), 10) is not None
    assert (await runs.rescue(later, "w2", max_attempts=2))[0] == [queued.id]
    assert await runs.lease(queued.id, "w2", utcnow(), 10) is not None
    rescued, given_up = await runs.rescue(later, "w3", max_attempts=2)
    assert rescued == []
    assert [(e.kind, e.seq) for e in given_up] == [("run_finished", 2)]
    failed = await runs.get("t1", queued.id)
    assert failed.status is RunStatus.FAILED
    assert "gave up after 2 attempts" in failed.error
    kinds = [e.kind for e in await runs.events(queued.id, s.id, 0, 10)]
    assert kinds == ["error", "run_finished"]


async def test_a_rescue_loses_to_a_renewal_or_an_event_that_came_in_between(
    database: Database,
) -> None:
    runs = RunRepository(database)
    s = await session(database)
    queued, _ = await runs.admit("t1", run(s.id), lambda _: "")
    assert await runs.lease(queued.id, "w1", utcnow(), 10) is not None
    later = utcnow() + timedelta(seconds=11)
    # The rescuer read the run as lapsed at attempt 1 with no events; then w1
    # (late, not dead) stored an event and renewed before the rescue wrote.
    event = RunEvent(queued.id, s.id, 1, 1, "text_delta", {"delta": "x"}, utcnow())
    assert await runs.append_events([event]) == set()
    async with database.session() as db:
        assert not await requeue_lapsed(db, queued.id, 1, 0, later)
    assert await runs.renew("w1", [queued.id], later, 10) == {queued.id}
    async with database.session() as db:
        assert not await requeue_lapsed(db, queued.id, 1, 1, later)
    assert (await runs.get("t1", queued.id)).attempt == 1
    # Read as it is now, and lapsed, it is queued again.
    async with database.session() as db:
        assert await requeue_lapsed(db, queued.id, 1, 1, later + timedelta(seconds=11))
    assert (await runs.get("t1", queued.id)).attempt == 2


async def test_a_zombie_message_waits_for_a_rescue_in_flight_and_is_refused(
    database: Database,
) -> None:
    runs = RunRepository(database)
    sessions = SessionRepository(database)
    s = await session(database)
    queued, _ = await runs.admit("t1", run(s.id), lambda _: "")
    assert await runs.lease(queued.id, "w1", utcnow(), 10) is not None
    reply = Message(new_id("msg"), s.id, "assistant", "late", utcnow(), run_id=queued.id)
    # The rescue has bumped the attempt but not committed yet when the
    # zombie (attempt 1) stores its reply: the reply must wait for the
    # rescue and then be refused, not slip in between.
    async with database.session() as db:
        assert await requeue_lapsed(db, queued.id, 1, 0, utcnow() + timedelta(seconds=11))
        zombie = asyncio.create_task(sessions.append_message("t1", reply, attempt=1))
        await asyncio.sleep(0.5)
        assert not zombie.done(), "the zombie's message did not wait for the rescue"
    with pytest.raises(RunAttemptStale):
        await zombie
    assert await sessions.messages("t1", s.id) == []


async def test_renewals_and_event_writes_of_many_runs_do_not_deadlock(
    database: Database,
) -> None:
    runs = RunRepository(database)
    held: list[str] = []
    sessions: dict[str, str] = {}
    for _ in range(20):
        s = await session(database)
        queued, _ = await runs.admit("t1", run(s.id), lambda _: "")
        assert await runs.lease(queued.id, "w1", utcnow(), 30) is not None
        held.append(queued.id)
        sessions[queued.id] = s.id
    seq = {run_id: 0 for run_id in held}

    async def write_events(order: list[str]) -> None:
        batch = []
        for run_id in order:
            seq[run_id] += 1
            batch.append(
                RunEvent(run_id, sessions[run_id], seq[run_id], 1, "text_delta", {}, utcnow())
            )
        assert await runs.append_events(batch) == set()

    # One worker's heartbeat and its event flushes run side by side on
    # separate connections, each touching every run, in opposite orders.
    for _ in range(15):
        await asyncio.gather(
            runs.renew("w1", list(reversed(held)), utcnow(), 30),
            write_events(held),
            write_events(list(reversed(held))),
            runs.renew("w1", held, utcnow(), 30),
        )
    assert await runs.renew("w1", held, utcnow(), 30) == set(held)
