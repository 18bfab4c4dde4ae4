"""The background loops shared by the workers that hold leases (the run
executor, the room runner, the workflow execution worker): a piece of work
repeated at an interval whatever fails (renewing leases, polling the queue,
rescuing lapsed ones), and a listener for the stop requests a control call
sends to every replica over the bus."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from aster.server.bus.base import EventBus

_log = structlog.get_logger("aster.workers")


async def repeat(
    interval_s: float,
    work: Callable[[], Awaitable[None]],
    *,
    log: structlog.typing.FilteringBoundLogger,
    what: str,
) -> None:
    """Awaits `work()`, then sleeps `interval_s`, until cancelled. A failure
    is logged as a warning (`what` names the worker) and the work is tried
    again at the next tick."""
    while True:
        try:
            await work()
        except Exception as err:
            log.warning(f"{what} loop failed; retrying", loop=work.__name__, error=str(err))
        await asyncio.sleep(interval_s)


async def listen_for_stops(
    bus: EventBus,
    topic: str,
    key: str,
    stop: Callable[[str], Any],
    subscribed: asyncio.Event,
) -> None:
    """Calls `stop(id)` for each `{key: id}` message on `topic`, until
    cancelled; sets `subscribed` once subscribed (nothing published from
    then on is missed)."""
    async with bus.subscribe(topic) as messages:
        subscribed.set()
        while True:
            message = await messages.get()
            if isinstance(message, dict) and key in message:
                stop(str(message[key]))


# A stop repeated this long after the first one cancels the task again: the
# first cancel was lost (a library swallowed it) and the task went on.
RECANCEL_AFTER_S = 5.0
_first_cancel: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()


def cancel_task(tasks: Mapping[str, asyncio.Task[Any]], task_id: str) -> bool:
    """Cancels the task `task_id` if this process runs it and it has not
    ended; False otherwise."""
    task = tasks.get(task_id)
    if task is None or task.done():
        return False
    now = time.monotonic()
    first = _first_cancel.get(task)
    # Once is enough: a second cancel (the stop broadcast reaching this
    # process too) would land in the task's clean-up and cut it short.
    if first is None:
        _first_cancel[task] = now
        task.cancel()
    elif now - first >= RECANCEL_AFTER_S:
        _log.warning("a stopped task is still running; cancelling it again", task=task.get_name())
        _first_cancel[task] = now
        task.cancel()
    return True
