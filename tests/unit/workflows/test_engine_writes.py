"""The engine's writes of deferred step ends: one at a time, and never lost
to a cancel (a parallel step stopping a branch mid-write)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aster.server.workflows.engine import ExecutionRun
from tests.unit.workflows.engine_fakes import execution_run


class SlowRepository:
    """Stores step ends after a delay, and notes overlapping writes."""

    def __init__(self) -> None:
        self.stored: list[Any] = []
        self.in_flight = 0
        self.overlapped = False

    async def end_steps(self, *args: Any) -> list[Any]:
        ends = args[4]
        self.in_flight += 1
        self.overlapped |= self.in_flight > 1
        try:
            await asyncio.sleep(0.2)
            self.stored.extend(ends)
        finally:
            self.in_flight -= 1
        return []


def engine(repository: SlowRepository) -> ExecutionRun:
    return execution_run(repository)


def end(key: str) -> tuple[Any, list[Any]]:
    return ((key, 1, {"state": "COMPLETED"}), [])


async def test_a_cancelled_branch_still_stores_the_ends_its_write_carries() -> None:
    repository = SlowRepository()
    run = engine(repository)
    run._deferred.append(end("winner"))  # another branch's result
    writer = asyncio.create_task(run._flush())
    await asyncio.sleep(0.05)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert [key for key, _, _ in repository.stored] == ["winner"]
    assert run._deferred == []


async def test_writes_of_parallel_branches_run_one_at_a_time_in_order() -> None:
    repository = SlowRepository()
    run = engine(repository)
    run._deferred.append(end("a"))
    first = asyncio.create_task(run._flush())
    await asyncio.sleep(0.05)
    run._deferred.append(end("b"))
    second = asyncio.create_task(run._flush())
    await asyncio.gather(first, second)
    assert not repository.overlapped
    assert [key for key, _, _ in repository.stored] == ["a", "b"]
