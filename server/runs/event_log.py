"""A run's event stream: every event is stored, then published; readers
replay the store and follow the bus with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import structlog

from aster.server.bus.base import EventBus
from aster.server.clock import as_utc
from aster.server.runs.models import RunEvent
from aster.server.storage.run_repository import RunRepository
from aster.server.streams.follow import replay_then_follow

_log = structlog.get_logger("aster.runs")
# A failing database is retried this many times (backing off from the
# first delay) before a batch of events is given up.
STORE_ATTEMPTS = 6
STORE_RETRY_FIRST_S = 0.2
# How often a follower re-checks the store while the bus is quiet.
# (Live events arrive through the bus; this only catches a missed one or a
# run that ended without a last event, so it can be rare.)
IDLE_CHECK_S = 10.0


def topic(run_id: str) -> str:
    """The bus topic of a run's events."""
    return f"run:{run_id}"


def _to_message(event: RunEvent) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "session_id": event.session_id,
        "seq": event.seq,
        "attempt": event.attempt,
        "kind": event.kind,
        "data": event.data,
        "t": event.create_time.isoformat() if event.create_time else None,
    }


def _from_message(message: dict[str, Any]) -> RunEvent:
    created = message.get("t")
    return RunEvent(
        run_id=message["run_id"],
        session_id=message["session_id"],
        seq=int(message["seq"]),
        attempt=int(message["attempt"]),
        kind=message["kind"],
        data=message["data"],
        create_time=as_utc(datetime.fromisoformat(created)) if created else None,
    )


class EventLog:
    """Appends events through one writer task that batches them into few
    transactions, and serves replay-then-follow readers."""

    def __init__(self, repository: RunRepository, bus: EventBus) -> None:
        self._repository = repository
        self._bus = bus
        self._queue: asyncio.Queue[tuple[RunEvent, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def append(self, event: RunEvent) -> asyncio.Future[None]:
        """Queues `event`; the future resolves once it is stored and published.
        Events are stored in the order they are appended."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="event-log-writer")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, done))
        return done

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events = [event for event, _ in batch]
            try:
                fenced = await self._store(events)
            except Exception as err:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
            else:
                for event in events:
                    # A fenced attempt's events are dropped: its worker
                    # learns it lost the run from its next heartbeat.
                    if (event.run_id, event.attempt) not in fenced:
                        await self.publish(event)
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
            for _ in batch:
                self._queue.task_done()

    async def _store(self, events: list[RunEvent]) -> set[tuple[str, int]]:
        """Stores a batch, retrying a failing database for a while: events
        are kept in order rather than dropped."""
        delay = STORE_RETRY_FIRST_S
        for attempt in range(STORE_ATTEMPTS):
            try:
                return await self._repository.append_events(events)
            except Exception as err:
                if attempt == STORE_ATTEMPTS - 1:
                    _log.error("storing run events failed", error=str(err), count=len(events))
                    raise
                _log.warning("storing run events failed; retrying", error=str(err))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def publish(self, event: RunEvent) -> None:
        """Publishes a stored event. A bus outage is logged, not raised:
        readers fill what they miss from the store."""
        try:
            await self._bus.publish(topic(event.run_id), _to_message(event))
        except Exception as err:
            _log.warning("publishing a run event failed", run_id=event.run_id, error=str(err))

    async def close(self) -> None:
        """Waits for queued events, then stops the writer."""
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def follow(
        self, run_id: str, session_id: str, after_seq: int, finished: Any
    ) -> AsyncIterator[RunEvent]:
        """Every event with seq > after_seq: stored ones first, then live ones,
        until the run's last event. `finished` is an async callable telling
        whether the run has ended (for runs that ended without a last event)."""

        async def read(after: int, limit: int) -> list[RunEvent]:
            return await self._repository.events(run_id, session_id, after, limit)

        async with self._bus.subscribe(topic(run_id)) as live:
            async for event in replay_then_follow(
                read,
                live,
                _from_message,
                after_seq,
                is_last=lambda e: e.terminal,
                finished=finished,
                idle_check_s=IDLE_CHECK_S,
            ):
                yield event
