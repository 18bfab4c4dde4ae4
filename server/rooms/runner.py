"""Room runs in this process, as tasks: each is leased (its lease renewed
while it runs), cancellable from any replica through the bus, and a run
whose replica died (lease lapsed) is marked FAILED by any other replica.
Room runs are not resumed after a crash: their messages so far stay in the
room, and the run ends FAILED with the reason."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog

from aster.server.bus.base import EventBus
from aster.server.clock import utcnow
from aster.server.ids import new_id
from aster.server.rooms.collaboration import Collaboration
from aster.server.rooms.events import run_data
from aster.server.rooms.models import RUN_UPDATE
from aster.server.runs.models import RunStatus
from aster.server.storage.room_repository import RoomRepository
from aster.server.streams.log import StreamLog
from aster.server.worker_loops import cancel_task, listen_for_stops, repeat

_log = structlog.get_logger("aster.rooms")
CONTROL_TOPIC = "room-control"
LOST_REPLICA = "the replica running the collaboration stopped; it was not resumed"


class RoomRunner:
    """Executes collaborations and keeps their leases."""

    def __init__(
        self, repository: RoomRepository, log: StreamLog, bus: EventBus, lease_s: float
    ) -> None:
        self.owner = new_id("rrw")
        self.lease_s = lease_s
        self._repository = repository
        self._log = log
        self._bus = bus
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self._shutting_down = asyncio.Event()

    async def start(self) -> None:
        """Listens for cancellations, renews leases, fails orphaned runs."""
        self._loops = [
            asyncio.create_task(
                listen_for_stops(
                    self._bus, CONTROL_TOPIC, "cancel", self.cancel_local, self._listening
                ),
                name="room-control",
            ),
            asyncio.create_task(self._every(self.lease_s / 3, self._renew), name="room-leases"),
            asyncio.create_task(self._every(self.lease_s / 2, self._sweep), name="room-sweep"),
        ]
        async with asyncio.timeout(10):
            await self._listening.wait()

    async def _every(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        await repeat(interval_s, work, log=_log, what="room run")

    async def _renew(self) -> None:
        until = utcnow() + timedelta(seconds=self.lease_s)
        await self._repository.renew(self.owner, list(self._tasks), until)

    async def _sweep(self) -> None:
        """Marks FAILED the runs whose replica stopped renewing their lease."""
        for tenant, run in await self._repository.lapsed_runs(utcnow()):
            if run.id in self._tasks:
                continue
            run.status, run.error, run.end_time = RunStatus.FAILED, LOST_REPLICA, utcnow()
            events = await self._repository.update_run(tenant, run, (RUN_UPDATE, run_data(run)))
            if events:
                _log.warning("room run lost its replica", room_run_id=run.id)
                await self._log.publish(events)

    def launch(self, collaboration: Collaboration) -> None:
        """Executes `collaboration` in the background."""
        run_id = collaboration.run.id
        task = asyncio.create_task(
            collaboration.execute(self._shutting_down), name=f"room-run-{run_id}"
        )
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    def cancel_local(self, run_id: str) -> bool:
        """Cancels the run if this process executes it."""
        return cancel_task(self._tasks, run_id)

    async def cancel_everywhere(self, run_id: str) -> None:
        """Cancels the run on whichever replica executes it."""
        self.cancel_local(run_id)
        await self._bus.publish(CONTROL_TOPIC, {"cancel": run_id})

    async def close(self) -> None:
        """Ends running collaborations (FAILED: the server shut down)."""
        self._shutting_down.set()
        for loop in self._loops:
            loop.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
