"""Starts workflow executions on their schedules. Every replica runs one
Scheduler; they need no leader.

Each tick reads every schedule with where its firings stand
(`last_fire_time`), works out the firings due since, starts one execution
per firing through the executions side with the idempotency key
`schedule:<workflow_id>:<schedule_id>:<fire time, ISO 8601 UTC>`, then moves
`last_fire_time` forward (never back). Two replicas that see the same firing
send the same key, and the executions' unique idempotency index keeps one
execution: each firing starts exactly one execution.

Catch-up after downtime: firings no older than `grace_s` all start; of the
older ones that were missed (no replica was up, or the database was down),
only the latest starts. A paused schedule skips its firings for good (its
`last_fire_time` moves on, so resuming does not replay them), and a new
schedule starts with the firings after it was created."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from aster.server.clock import utcnow
from aster.server.errors import AsterError, Unavailable
from aster.server.storage.workflow_repository import WorkflowRepository
from aster.server.workflows.cron import CronError, firings, latest_firing
from aster.server.workflows.models import DueSchedule

log = structlog.get_logger(__name__)

# The most firings one schedule starts in one tick (an every-second
# schedule within a 60 s grace window needs 60).
MAX_FIRINGS_PER_TICK = 1_000


class ExecutionStarter(Protocol):
    """The executions side (ExecutionService): starts an execution, or
    returns the one started before with the same idempotency key."""

    async def execute(
        self, tenant: str, workflow_id: str, input: dict[str, Any], idempotency_key: str = ""
    ) -> Any: ...


def idempotency_key(workflow_id: str, schedule_id: str, fire_time: datetime) -> str:
    """The idempotency key of the execution one firing starts."""
    return f"schedule:{workflow_id}:{schedule_id}:{fire_time.isoformat()}"


class Scheduler:
    """The schedule loop of one replica."""

    def __init__(
        self,
        repository: WorkflowRepository,
        starter: ExecutionStarter,
        *,
        interval_s: float = 0.5,
        grace_s: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._repository = repository
        self._starter = starter
        self._interval_s = interval_s
        self._grace = timedelta(seconds=grace_s)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="workflow-scheduler")

    async def close(self) -> None:
        """Stops the loop (a tick in progress is cancelled; its firings are
        started again, with the same keys, by the next tick of any replica)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a bad tick
                log.warning("workflow scheduler tick failed", exc_info=True)
            await asyncio.sleep(self._interval_s)

    async def tick(self) -> int:
        """Starts every due firing of every schedule; how many it started
        (or found started already)."""
        started = 0
        for due in await self._repository.schedules():
            started += await self._fire(due, self._clock())
        return started

    def plan(self, due: DueSchedule, now: datetime) -> list[datetime]:
        """The firings of `due` to start at `now` (see the module docstring)."""
        after = due.last_fire_time or due.create_time
        horizon = now - self._grace
        planned = firings(due.schedule, max(after, horizon), now, MAX_FIRINGS_PER_TICK)
        if after < horizon:
            missed = latest_firing(due.schedule, after, horizon)
            if missed is not None:
                planned.insert(0, missed)
        return planned

    async def _fire(self, due: DueSchedule, now: datetime) -> int:
        schedule = due.schedule
        try:
            planned = self.plan(due, now)
        except CronError:
            log.warning("workflow schedule cannot be computed", schedule=schedule.id)
            return 0
        if not planned:
            return 0
        if schedule.paused:
            await self._repository.advance_schedule(due, planned[-1])
            return 0
        started = 0
        for fire_time in planned:
            key = idempotency_key(due.workflow_id, schedule.id, fire_time)
            try:
                await self._starter.execute(due.tenant, due.workflow_id, dict(schedule.input), key)
                started += 1
            except Unavailable:
                # Try again next tick, with the same key.
                log.warning("workflow schedule firing postponed", key=key, exc_info=True)
                return started
            except AsterError as error:
                # The workflow is gone or refuses to start: this firing is lost.
                log.warning("workflow schedule firing failed", key=key, error=error.message)
            await self._repository.advance_schedule(due, fire_time)
        return started
