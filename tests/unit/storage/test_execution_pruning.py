"""Pruning the event streams of ended executions, on SQLite and PostgreSQL:
old ones lose their events (not their step history), and watching one
still ends on its terminal state."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from aster.server.bus.in_process import InProcessBus
from aster.server.clock import utcnow
from aster.server.ids import new_id
from aster.server.storage.database import Database
from aster.server.storage.execution_repository import ExecutionRepository, stream_of
from aster.server.storage.stream_repository import StreamRepository
from aster.server.streams.log import StreamLog
from aster.server.streams.models import StreamEvent
from aster.server.workflows.execution_events import state_changed, step_started
from aster.server.workflows.execution_models import (
    Execution,
    ExecutionState,
    StepAttempt,
    StepState,
)
from aster.server.workflows.execution_service import ExecutionService, WorkflowSource
from aster.server.workflows.execution_worker import ExecutionWorker

DAY = timedelta(days=1)


async def _ended(repo: ExecutionRepository, tenant: str, days_ago: float) -> Execution:
    """An execution that ran one step and failed `days_ago` days ago."""
    created = Execution(
        id=new_id("exe"),
        tenant=tenant,
        workflow_id="wf",
        workflow_version=1,
        state=ExecutionState.PENDING,
        input={},
        create_time=utcnow(),
        definition={"steps": []},
    )
    await repo.create(created, [state_changed(ExecutionState.PENDING)])
    leased = await repo.lease(created.id, "w", utcnow(), 10)
    assert leased is not None
    attempt = StepAttempt(created.id, "a", "a", "tool", 1, StepState.RUNNING, utcnow())
    await repo.add_step("w", 1, tenant, attempt, [step_started("a", 1, {})])
    await repo.finish(
        "w",
        1,
        tenant,
        created.id,
        ExecutionState.FAILED,
        [state_changed(ExecutionState.FAILED, error="boom")],
        error="boom",
        end_time=utcnow() - days_ago * DAY,
    )
    return created


async def _watch(
    service: ExecutionService, tenant: str, execution_id: str, after: int = 0
) -> list[StreamEvent]:
    return [e async for e in service.watch(tenant, "wf", execution_id, after)]


async def test_old_execution_streams_are_pruned_and_still_end_on_their_state(
    database: Database,
) -> None:
    repo = ExecutionRepository(database)
    log = StreamLog(StreamRepository(database), InProcessBus(), idle_check_s=0.2)
    service = ExecutionService(repo, cast(WorkflowSource, None), log, cast(ExecutionWorker, None))
    old = await _ended(repo, "t1", days_ago=2)
    old_other_tenant = await _ended(repo, "t2", days_ago=2)
    recent = await _ended(repo, "t1", days_ago=0)
    live = Execution(
        id=new_id("exe"),
        tenant="t1",
        workflow_id="wf",
        workflow_version=1,
        state=ExecutionState.PENDING,
        input={},
        create_time=utcnow() - 3 * DAY,
        definition={"steps": []},
    )
    await repo.create(live, [state_changed(ExecutionState.PENDING)])

    assert await service.prune_events(DAY.total_seconds()) == 6
    assert await service.prune_events(DAY.total_seconds()) == 0
    for gone in (old, old_other_tenant):
        assert await log.read(gone.tenant, stream_of(gone.id), 0, 10) == []
        # The step history and the stream's head stay.
        kept = await repo.get(gone.tenant, "wf", gone.id)
        assert [s.key for s in kept.steps] == ["a"] and kept.error == "boom"
        assert await log.last_seq(gone.tenant, stream_of(gone.id)) == 3
    assert [e.seq for e in await log.read("t1", stream_of(recent.id), 0, 10)] == [1, 2, 3]
    assert [e.seq for e in await log.read("t1", stream_of(live.id), 0, 10)] == [1]

    # Watching a pruned execution: nothing to replay, then its terminal
    # state at the stream's last seq; from that cursor on, nothing.
    (told,) = await _watch(service, "t1", old.id)
    assert (told.seq, told.kind) == (3, "execution_failed")
    assert told.data == {"state": "EXECUTION_STATE_FAILED", "error": "boom"}
    assert await _watch(service, "t1", old.id, after=3) == []
    # A kept stream replays as stored, ending on its own terminal event.
    kinds = [e.kind for e in await _watch(service, "t1", recent.id)]
    assert kinds == ["state_changed", "step_started", "execution_failed"]
