"""The scheduler's plan (which firings start when) and its ticks on SQLite
and PostgreSQL: several schedulers on one database start each firing once.
The executions side is a stand-in here that keeps one execution per
idempotency key, as the real one's unique index does; the end-to-end test
with real replicas is tests/e2e/test_workflow_schedules.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from aster.server.storage.database import Database
from aster.server.storage.workflow_repository import WorkflowRepository
from aster.server.workflows.models import (
    DueSchedule,
    Schedule,
    Step,
    ToolStep,
    Workflow,
    WorkflowSpec,
)
from aster.server.workflows.scheduler import Scheduler, idempotency_key
from tests.unit.storage.conftest import database  # noqa: F401 - the shared fixture

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class Starter:
    """Records starts; one execution per key."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.executions: dict[str, dict[str, Any]] = {}

    async def execute(
        self, tenant: str, workflow_id: str, input: dict[str, Any], idempotency_key: str = ""
    ) -> Any:
        self.calls.append(idempotency_key)
        await asyncio.sleep(0)
        return self.executions.setdefault(idempotency_key, {"tenant": tenant, "input": input})


def due(schedule: Schedule, last: datetime | None = None, created: datetime = T0) -> DueSchedule:
    return DueSchedule("t1", "flow", schedule, created, last)


def planner(grace_s: float = 60) -> Scheduler:
    return Scheduler(None, Starter(), grace_s=grace_s)  # type: ignore[arg-type]


def test_every_firing_in_the_grace_window_starts() -> None:
    every_second = Schedule("s", "* * * * * *")
    plan = planner().plan(due(every_second), T0 + timedelta(seconds=3.5))
    assert plan == [T0 + timedelta(seconds=i) for i in (1, 2, 3)]
    later = planner().plan(
        due(every_second, last=T0 + timedelta(seconds=3)), T0 + timedelta(seconds=4)
    )
    assert later == [T0 + timedelta(seconds=4)]


def test_after_downtime_only_the_latest_missed_firing_starts() -> None:
    hourly = Schedule("s", "0 * * * *")
    now = T0 + timedelta(hours=5, minutes=30)
    assert planner().plan(due(hourly), now) == [T0 + timedelta(hours=5)]
    every_second = Schedule("s", "* * * * * *")
    now = T0 + timedelta(hours=1)
    plan = planner(grace_s=10).plan(due(every_second), now)
    assert plan[0] == now - timedelta(seconds=10)
    assert plan[1:] == [now - timedelta(seconds=9 - i) for i in range(10)]


def test_start_end_time_zone_and_creation_bound_the_firings() -> None:
    bounded = Schedule(
        "s", "* * * * * *", start_time=T0 + timedelta(seconds=2), end_time=T0 + timedelta(seconds=4)
    )
    assert planner().plan(due(bounded), T0 + timedelta(seconds=30)) == [
        T0 + timedelta(seconds=s) for s in (2, 3, 4)
    ]
    # Nothing before the schedule was created, even with an older start.
    early = Schedule("s", "* * * * * *", start_time=T0 - timedelta(days=1))
    assert planner().plan(due(early), T0 + timedelta(seconds=1)) == [T0 + timedelta(seconds=1)]
    paris = Schedule("s", "0 9 * * *", time_zone="Europe/Paris")
    assert planner().plan(due(paris), datetime(2030, 1, 2, 8, 0, 1, tzinfo=UTC)) == [
        datetime(2030, 1, 2, 8, tzinfo=UTC)
    ]


async def _store(repository: WorkflowRepository, schedules: list[Schedule]) -> None:
    now = datetime.now(UTC)
    spec = WorkflowSpec(
        display_name="Flow", steps=[Step("a", ToolStep("get_time"))], schedules=schedules
    )
    await repository.create("t1", Workflow("flow", spec, 1, now, now))


async def test_two_schedulers_start_each_firing_once(
    database: Database,  # noqa: F811
) -> None:
    repository = WorkflowRepository(database)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    await _store(
        repository,
        [
            Schedule(
                "fast",
                "* * * * * *",
                start_time=start,
                end_time=start + timedelta(seconds=2),
                input={"x": 1},
            ),
            Schedule("paused", "* * * * * *", paused=True),
        ],
    )
    starter = Starter()
    replicas = [Scheduler(repository, starter, interval_s=0.05) for _ in range(2)]
    for replica in replicas:
        replica.start()
    await asyncio.sleep((start + timedelta(seconds=3.5) - datetime.now(UTC)).total_seconds())
    for replica in replicas:
        await replica.close()
    expected = [idempotency_key("flow", "fast", start + timedelta(seconds=s)) for s in range(3)]
    assert sorted(starter.executions) == expected
    assert all(e == {"tenant": "t1", "input": {"x": 1}} for e in starter.executions.values())
    # The paused schedule started nothing but moved on.
    by_id = {d.schedule.id: d for d in await repository.schedules()}
    assert by_id["fast"].last_fire_time == start + timedelta(seconds=2)
    assert by_id["paused"].last_fire_time is not None


async def test_a_tick_after_a_crash_repeats_keys_not_executions(
    database: Database,  # noqa: F811
) -> None:
    repository = WorkflowRepository(database)
    await _store(repository, [Schedule("s", "* * * * * *")])
    starter = Starter()
    scheduler = Scheduler(repository, starter)
    [row] = await repository.schedules()
    # As if a replica started the firings but died before recording them.
    now = row.create_time + timedelta(seconds=2.5)
    planned = scheduler.plan(row, now)
    assert len(planned) in (2, 3)
    for fire_time in planned:
        await starter.execute("t1", "flow", {}, idempotency_key("flow", "s", fire_time))
    scheduler_clock = Scheduler(repository, starter, clock=lambda: now)
    await scheduler_clock.tick()
    assert len(starter.calls) == 2 * len(planned) and len(starter.executions) == len(planned)
    await scheduler_clock.tick()
    assert len(starter.calls) == 2 * len(planned)
