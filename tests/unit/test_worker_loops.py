"""Stopping a worker's task: one cancel per stop request burst, and another
one when the first was lost and the task went on."""

from __future__ import annotations

import asyncio

import pytest

from aster.server import worker_loops
from aster.server.worker_loops import cancel_task


async def test_a_repeated_stop_does_not_cancel_the_clean_up() -> None:
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)  # clean-up that a second cancel would cut
            cleaned.set()

    task = asyncio.create_task(work())
    await asyncio.sleep(0)
    assert cancel_task({"t": task}, "t")
    await asyncio.sleep(0.01)
    assert cancel_task({"t": task}, "t")  # the broadcast of the same stop
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()
    assert not cancel_task({"t": task}, "t")
    assert not cancel_task({}, "t")


async def test_a_stop_repeated_later_cancels_a_task_that_swallowed_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_loops, "RECANCEL_AFTER_S", 0.05)
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # as a library that loses a cancel would
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    cancel_task({"t": task}, "t")
    await swallowed.wait()
    cancel_task({"t": task}, "t")  # too soon: ignored
    await asyncio.sleep(0.01)
    assert not task.done()
    await asyncio.sleep(0.06)
    cancel_task({"t": task}, "t")
    with pytest.raises(asyncio.CancelledError):
        await task
