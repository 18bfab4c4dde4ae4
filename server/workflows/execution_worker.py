"""Drives executions on this replica through leases, as the run executor
drives runs: a poller takes PENDING executions, a heartbeat renews the
leases held, a rescuer puts back executions whose worker stopped renewing
(it died), a deadline check takes up executions whose approval's deadline
passed, and a control topic stops an execution here when a control call
(suspend, cancel) took it away on any replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from aster.server.bus.base import EventBus
from aster.server.clock import utcnow
from aster.server.ids import new_id
from aster.server.observability import aster_metrics
from aster.server.runs.limits import LeaseSettings
from aster.server.storage.execution_repository import ExecutionRepository
from aster.server.worker_loops import cancel_task, listen_for_stops, repeat
from aster.server.workflows.engine import EngineDependencies, ExecutionRun
from aster.server.workflows.execution_events import state_changed
from aster.server.workflows.execution_models import Execution, ExecutionState
from aster.server.workflows.graph import WorkflowGraph

_log = structlog.get_logger("aster.workflows")
CONTROL_TOPIC = "workflow-control"
# How often a worker looks for approvals whose deadline passed (at least
# its poll interval).
APPROVAL_CHECK_S = 1.0

GraphLoader = Callable[[Execution], Awaitable[WorkflowGraph]]


class ExecutionWorker:
    """The executions this process drives, one task each."""

    def __init__(
        self,
        deps: EngineDependencies,
        bus: EventBus,
        load_graph: GraphLoader,
        lease: LeaseSettings | None = None,
    ) -> None:
        self.owner = new_id("wfw")
        self._deps = deps
        self._repo: ExecutionRepository = deps.executions
        self._bus = bus
        self._load_graph = load_graph
        self._lease = lease or LeaseSettings()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._generations: dict[str, int] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self._closing = False

    async def start(self) -> None:
        """Starts polling, renewing, rescuing, listening for stops and
        reporting the queue's gauges."""
        lease_s = self._lease.lease_s
        self._loops = [
            asyncio.create_task(
                listen_for_stops(
                    self._bus, CONTROL_TOPIC, "stop", self.stop_local, self._listening
                ),
                name="workflow-control",
            ),
            asyncio.create_task(self._every(self._lease.poll_s, self._poll), name="wf-poll"),
            asyncio.create_task(self._every(lease_s / 3, self._renew), name="wf-leases"),
            asyncio.create_task(self._every(lease_s / 2, self._rescue), name="wf-rescue"),
            asyncio.create_task(
                self._every(max(self._lease.poll_s, APPROVAL_CHECK_S), self._wake_approvals),
                name="wf-approval-deadlines",
            ),
            asyncio.create_task(
                self._every(aster_metrics.QUEUE_REFRESH_S, self._report_queue),
                name="wf-queue-metrics",
            ),
        ]
        async with asyncio.timeout(10):
            await self._listening.wait()

    async def _every(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        await repeat(interval_s, work, log=_log, what="workflow worker")

    def dispatch(self, execution_id: str) -> None:
        """Tries to take the execution now, here (another replica's poller
        may win: then this ends quietly)."""
        if self._closing or execution_id in self._tasks:
            return
        self._track(execution_id, asyncio.create_task(self._take(execution_id)))

    async def _poll(self) -> None:
        if self._closing:
            return
        room = self._lease.max_runs - len(self._tasks)
        if room <= 0:
            return
        now = utcnow()
        for execution_id in await self._repo.claim(self.owner, now, self._lease.lease_s, room):
            self._track(execution_id, asyncio.create_task(self._drive_claimed(execution_id)))

    async def _renew(self) -> None:
        # Only the executions asked about: one taken while the renewal was
        # on its way is not in `held`, and is not lost.
        asked = list(self._generations)
        held = await self._repo.renew(self.owner, asked, utcnow(), self._lease.lease_s)
        for execution_id in set(asked) - held:
            _log.warning("lost the lease of an execution; stopping it here", id=execution_id)
            self.stop_local(execution_id)

    async def _rescue(self) -> None:
        rescued, given_up = await self._repo.rescue(
            utcnow(), self.owner, self._lease.max_attempts, driving=list(self._generations)
        )
        if given_up:
            _log.error(
                "gave up on executions that lost their worker every time",
                executions=sorted({e.stream.removeprefix("execution:") for e in given_up}),
            )
            await self._deps.streams.publish(given_up)
        if rescued:
            _log.warning("rescued executions whose lease lapsed", executions=rescued)
            await self._poll()

    async def _report_queue(self) -> None:
        """Sets the execution-queue gauges from the database (the same
        numbers on every replica); a failure is logged by the loop."""
        stats = await self._repo.queue_stats(utcnow())
        aster_metrics.EXECUTION_QUEUE_DEPTH.set(stats.pending)
        aster_metrics.EXECUTIONS_LEASE_EXPIRED.set(stats.lease_expired)

    async def _wake_approvals(self) -> None:
        """Takes up the executions whose approval's deadline passed."""
        if self._closing:
            return
        woken, events = await self._repo.wake_approvals(utcnow())
        if not woken:
            return
        _log.info("approval deadlines passed; taking the executions up", executions=woken)
        await self._deps.streams.publish(events)
        for execution_id in woken:
            self.dispatch(execution_id)

    def _track(self, execution_id: str, task: asyncio.Task[None]) -> None:
        previous = self._tasks.get(execution_id)
        if previous is not None and not previous.done():
            previous.cancel()
        self._tasks[execution_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(execution_id) is finished:
                del self._tasks[execution_id]

        task.add_done_callback(done)

    async def _take(self, execution_id: str) -> None:
        execution = await self._repo.lease(execution_id, self.owner, utcnow(), self._lease.lease_s)
        if execution is not None:
            await self._drive(execution)

    async def _drive_claimed(self, execution_id: str) -> None:
        execution = await self._repo.get_any(execution_id)
        if execution is not None and execution.lease_owner == self.owner:
            await self._drive(execution)

    async def _drive(self, execution: Execution) -> None:
        self._generations[execution.id] = execution.generation
        _log.info(
            "driving execution",
            execution_id=execution.id,
            generation=execution.generation,
            worker=self.owner,
        )
        try:
            graph = await self._load_graph(execution)
            await ExecutionRun(self._deps, execution, graph, self.owner).run()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            _log.error("execution crashed", execution_id=execution.id, exc_info=err)
            await self._fail(execution, "internal error; the server log has the details")
        finally:
            if self._generations.get(execution.id) == execution.generation:
                del self._generations[execution.id]

    async def _fail(self, execution: Execution, error: str) -> None:
        with contextlib.suppress(Exception):
            stored = await self._repo.finish(
                self.owner,
                execution.generation,
                execution.tenant,
                execution.id,
                ExecutionState.FAILED,
                [state_changed(ExecutionState.FAILED, error=error)],
                error=error,
                end_time=utcnow(),
            )
            await self._deps.streams.publish(stored)

    def stop_local(self, execution_id: str) -> bool:
        """Stops the execution's task here, if this process drives it."""
        return cancel_task(self._tasks, execution_id)

    async def stop_everywhere(self, execution_id: str) -> None:
        """Stops the execution on whichever replica drives it."""
        self.stop_local(execution_id)
        await self._bus.publish(CONTROL_TOPIC, {"stop": execution_id})

    async def close(self) -> None:
        """Stops driving: every execution held is given back (PENDING, its
        running attempts marked interrupted), for the next start or another
        replica to take at once."""
        self._closing = True
        for loop in self._loops:
            loop.cancel()
        held = dict(self._generations)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for execution_id, generation in held.items():
            with contextlib.suppress(Exception):
                await self._repo.release(execution_id, self.owner, generation, utcnow())
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
