"""The engine's writes of deferred step ends: one at a time, and never lost
to a cancel (a parallel step stopping a branch mid-write)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from aster.server.clock import utcnow
from aster.server.workflows.engine import EngineDependencies, ExecutionRun
from aster.server.workflows.execution_models import Execution, ExecutionState


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


class Streams:
    async def publish(self, events: Any) -> None:
        return None


def engine(repository: SlowRepository) -> ExecutionRun:
    deps = EngineDependencies(
        executions=cast(Any, repository),
        streams=cast(Any, Streams()),
        tools=cast(Any, None),
        agents=cast(Any, None),
    )
    execution = Execution(
        id="exe_1",
        tenant="t1",
        workflow_id="wfl_1",
        workflow_version=1,
        state=ExecutionState.RUNNING,
        input={},
        create_time=utcnow(),
    )
    return ExecutionRun(deps, execution, graph=cast(Any, None), owner="w1")


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
