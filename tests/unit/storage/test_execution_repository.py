"""Workflow executions on SQLite and PostgreSQL: idempotent starts, leases,
fencing, rescue, control transitions, tenancy and pages."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition, NotFound
from aster.server.ids import new_id
from aster.server.storage.database import Database
from aster.server.storage.execution_repository import ExecutionFenced, ExecutionRepository
from aster.server.streams.log import StreamLog
from aster.server.workflows.execution_events import state_changed
from aster.server.workflows.execution_models import (
    Execution,
    ExecutionState,
    StepAttempt,
    StepState,
)

PENDING = [state_changed(ExecutionState.PENDING)]


def execution(tenant: str = "t1", workflow_id: str = "wf", key: str = "") -> Execution:
    return Execution(
        id=new_id("exe"),
        tenant=tenant,
        workflow_id=workflow_id,
        workflow_version=1,
        state=ExecutionState.PENDING,
        input={"x": 1},
        create_time=utcnow(),
        definition={"steps": []},
        idempotency_key=key,
    )


def step(execution_id: str, key: str = "a", attempt: int = 1) -> StepAttempt:
    return StepAttempt(
        execution_id=execution_id,
        key=key,
        step_name=key,
        kind="tool",
        attempt=attempt,
        state=StepState.RUNNING,
        start_time=utcnow(),
        input={"n": attempt},
    )


async def test_the_same_idempotency_key_returns_the_same_execution(database: Database) -> None:
    repo = ExecutionRepository(database)
    first, events = await repo.create(execution(key="k"), PENDING)
    assert [e.seq for e in events] == [1]
    again, more = await repo.create(execution(key="k"), PENDING)
    assert again.id == first.id and more == []
    # Racing starts with one key make one execution.
    racers = await asyncio.gather(*(repo.create(execution(key="race"), PENDING) for _ in range(6)))
    assert len({r[0].id for r in racers}) == 1
    assert sum(1 for r in racers if r[1]) == 1
    # Keys are per workflow and per tenant; no key never collides.
    other_workflow, _ = await repo.create(execution(workflow_id="wf2", key="k"), PENDING)
    other_tenant, _ = await repo.create(execution(tenant="t2", key="k"), PENDING)
    no_key = [await repo.create(execution(), PENDING) for _ in range(2)]
    ids = {first.id, other_workflow.id, other_tenant.id, *(e.id for e, _ in no_key)}
    assert len(ids) == 5


async def test_leases_fence_a_worker_that_lost_its_execution(database: Database) -> None:
    repo = ExecutionRepository(database)
    created, _ = await repo.create(execution(), PENDING)
    now = utcnow()
    taken = await repo.claim("w1", now, 10, 10)
    assert taken == [created.id]
    assert await repo.claim("w2", now, 10, 10) == []
    assert await repo.lease(created.id, "w2", now, 10) is None
    leased = await repo.get_any(created.id)
    assert leased is not None and leased.generation == 1 and leased.lease_owner == "w1"
    await repo.add_step("w1", 1, "t1", step(created.id))
    assert await repo.renew("w1", [created.id], now, 10) == {created.id}
    # The lease lapses: its own worker, still driving it, does not rescue
    # it; another worker does.
    later = now + timedelta(seconds=60)
    assert await repo.rescue(later, "w1", driving=[created.id]) == ([], [])
    assert await repo.rescue(later, "w2") == ([created.id], [])
    again = await repo.lease(created.id, "w2", later, 10)
    assert again is not None and again.generation == 2
    assert [s.key for s in again.steps] == ["a"]
    # The first worker's writes are refused from now on.
    with pytest.raises(ExecutionFenced):
        await repo.add_step("w1", 1, "t1", step(created.id, "b"))
    with pytest.raises(ExecutionFenced):
        await repo.update_step("w1", 1, "t1", created.id, "a", 1, state="COMPLETED")
    with pytest.raises(ExecutionFenced):
        await repo.finish("w1", 1, "t1", created.id, ExecutionState.COMPLETED, [])
    assert await repo.renew("w1", [created.id], later, 10) == set()
    await repo.update_step(
        "w2", 2, "t1", created.id, "a", 1, state="CANCELLED", error="interrupted"
    )
    await repo.add_step("w2", 2, "t1", step(created.id, "a", 2))
    stored = await repo.finish(
        "w2",
        2,
        "t1",
        created.id,
        ExecutionState.COMPLETED,
        [state_changed(ExecutionState.COMPLETED)],
        output=5,
        end_time=later,
    )
    assert [e.kind for e in stored] == ["execution_completed"]
    done = await repo.get("t1", "wf", created.id)
    assert done.state is ExecutionState.COMPLETED and done.output == 5
    assert [(s.key, s.attempt, s.state) for s in done.steps] == [
        ("a", 1, StepState.CANCELLED),
        ("a", 2, StepState.RUNNING),
    ]


async def test_an_execution_that_keeps_losing_its_worker_is_given_up(
    database: Database,
) -> None:
    repo = ExecutionRepository(database)
    created, _ = await repo.create(execution(), PENDING)
    other, _ = await repo.create(execution(), PENDING)
    now = utcnow()
    for attempt in (1, 2):
        now += timedelta(seconds=60)
        assert set(await repo.claim(f"w{attempt}", now, 10, 10)) == {created.id, other.id}
        await repo.add_step(f"w{attempt}", attempt, "t1", step(created.id, "a", attempt))
        # A worker that renews keeps `other`; the one driving `created` died.
        if attempt == 2:
            await repo.renew("w2", [other.id], now + timedelta(seconds=60), 10)
        rescued, given_up = await repo.rescue(now + timedelta(seconds=61), "rescuer", 2)
        if attempt == 1:
            assert sorted(rescued) == sorted([created.id, other.id]) and given_up == []
    # The second lapse of `created` is its last: FAILED, its step cancelled.
    assert rescued == [] and [(e.stream, e.kind) for e in given_up] == [
        (f"execution:{created.id}", "execution_failed")
    ]
    assert "gave up after 2 attempts" in given_up[0].data["error"]
    failed = await repo.get("t1", "wf", created.id)
    assert failed.state is ExecutionState.FAILED and failed.end_time is not None
    assert "gave up after 2 attempts" in failed.error and failed.lease_owner == ""
    assert [(s.attempt, s.state) for s in failed.steps] == [
        (1, StepState.CANCELLED),
        (2, StepState.CANCELLED),
    ]
    assert "gave up" in failed.steps[1].error
    # The dead worker's writes are refused; the other execution runs on.
    with pytest.raises(ExecutionFenced):
        await repo.finish("w2", 2, "t1", created.id, ExecutionState.COMPLETED, [])
    assert (await repo.get("t1", "wf", other.id)).state is ExecutionState.RUNNING
    # No cap (0): rescued however often.
    later = now + timedelta(seconds=600)
    assert await repo.rescue(later, "rescuer", 0) == ([other.id], [])


async def test_control_moves_only_from_the_allowed_states(database: Database) -> None:
    repo = ExecutionRepository(database)
    created, _ = await repo.create(execution(), PENDING)
    await repo.lease(created.id, "w1", utcnow(), 10)
    await repo.add_step("w1", 1, "t1", step(created.id))
    suspended, events = await repo.control(
        "t1",
        "wf",
        created.id,
        frozenset({ExecutionState.RUNNING}),
        ExecutionState.SUSPENDED,
        verb="suspend",
        end_steps=[StepState.RUNNING],
        step_error="suspended",
        now=utcnow(),
        events=[state_changed(ExecutionState.SUSPENDED)],
    )
    assert suspended.state is ExecutionState.SUSPENDED and suspended.lease_owner == ""
    assert suspended.steps[0].state is StepState.CANCELLED
    assert [e.seq for e in events] == [2]
    # The worker that held it is fenced.
    with pytest.raises(ExecutionFenced):
        await repo.add_step("w1", 1, "t1", step(created.id, "b"))
    with pytest.raises(FailedPrecondition, match=r"cannot suspend .* it is SUSPENDED, not RUNNING"):
        await repo.control(
            "t1",
            "wf",
            created.id,
            frozenset({ExecutionState.RUNNING}),
            ExecutionState.SUSPENDED,
            verb="suspend",
            now=utcnow(),
        )
    with pytest.raises(NotFound):
        await repo.control(
            "t2",
            "wf",
            created.id,
            frozenset(ExecutionState),
            ExecutionState.CANCELLED,
            verb="cancel",
            now=utcnow(),
        )
    with pytest.raises(FailedPrecondition, match=r"it is SUSPENDED, not WAITING_APPROVAL"):
        await repo.decide_approval(
            "t1",
            "wf",
            created.id,
            "a",
            ExecutionState.PENDING,
            StepState.COMPLETED,
            verb="approve",
            now=utcnow(),
            step_values={},
        )


async def test_tenants_and_workflows_scope_reads_and_pages(database: Database) -> None:
    repo = ExecutionRepository(database)
    made = [(await repo.create(execution(), PENDING))[0] for _ in range(5)]
    await repo.create(execution(tenant="t2"), PENDING)
    with pytest.raises(NotFound):
        await repo.get("t2", "wf", made[0].id)
    with pytest.raises(NotFound):
        await repo.get("t1", "other", made[0].id)
    page, more = await repo.list_page("t1", "wf", None, None, 3)
    assert more and len(page) == 3
    assert [e.id for e in page] == [
        e.id for e in sorted(made, key=lambda e: (e.create_time, e.id))
    ][::-1][:3]
    pending, _ = await repo.list_page("t1", "wf", ExecutionState.PENDING, None, 10)
    running, _ = await repo.list_page("t1", "wf", ExecutionState.RUNNING, None, 10)
    assert len(pending) == 5 and running == []


async def test_events_are_stored_with_the_rows_that_caused_them(database: Database) -> None:
    from aster.server.bus.in_process import InProcessBus
    from aster.server.storage.stream_repository import StreamRepository

    repo = ExecutionRepository(database)
    log = StreamLog(StreamRepository(database), InProcessBus())
    created, _ = await repo.create(execution(), PENDING)
    await repo.lease(created.id, "w1", utcnow(), 10)
    await repo.add_step("w1", 1, "t1", step(created.id), [("step_started", {"step_name": "a"})])
    with pytest.raises(ExecutionFenced):
        await repo.add_step("w9", 1, "t1", step(created.id, "b"), [("step_started", {})])
    stored = await log.read("t1", f"execution:{created.id}", 0, 10)
    assert [(e.seq, e.kind) for e in stored] == [(1, "state_changed"), (2, "step_started")]


async def test_a_rejection_ends_every_open_step_of_the_execution(database: Database) -> None:
    repo = ExecutionRepository(database)
    created, _ = await repo.create(execution(), PENDING)
    now = utcnow()
    assert await repo.claim("w1", now, 10, 10) == [created.id]
    # Two approvals wait in two branches of a running parallel step.
    await repo.add_step("w1", 1, "t1", step(created.id, "p"))
    for key in ("a", "b"):
        waiting = replace(step(created.id, key), state=StepState.WAITING, kind="approval")
        await repo.add_step("w1", 1, "t1", waiting)
    await repo.finish("w1", 1, "t1", created.id, ExecutionState.WAITING_APPROVAL, [])
    rejected, _ = await repo.decide_approval(
        "t1",
        "wf",
        created.id,
        "a",
        ExecutionState.FAILED,
        StepState.FAILED,
        verb="reject",
        now=now,
        step_values={"error": "rejected"},
        error="step 'a' was rejected",
        end_time=now,
    )
    assert rejected.state is ExecutionState.FAILED
    states = {s.key: (s.state, s.error) for s in rejected.steps}
    assert states["a"] == (StepState.FAILED, "rejected")
    # No step of a FAILED execution is left running or waiting.
    for key in ("p", "b"):
        assert states[key][0] is StepState.CANCELLED, key
        assert "rejected" in states[key][1]


async def test_a_worker_rescues_a_lapsed_execution_it_holds_but_no_longer_drives(
    database: Database,
) -> None:
    repo = ExecutionRepository(database)
    created, _ = await repo.create(execution(), PENDING)
    now = utcnow()
    assert await repo.claim("w1", now, 10, 10) == [created.id]
    # w1 stopped driving it without giving it back: on a single replica
    # nobody else would ever take it up.
    later = now + timedelta(seconds=60)
    assert await repo.rescue(later, "w1", driving=[]) == ([created.id], [])
    again = await repo.claim("w1", later, 10, 10)
    assert again == [created.id]
