"""The execution worker's heartbeat: only an execution it asked about and
did not get back counts as lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from aster.server.workflows.engine import EngineDependencies
from aster.server.workflows.execution_worker import ExecutionWorker


class SlowRenewals:
    """Renews every lease asked about, slowly."""

    async def renew(
        self, owner: str, execution_ids: Sequence[str], now: datetime, lease_s: float
    ) -> set[str]:
        await asyncio.sleep(0.2)
        return set(execution_ids)


async def test_an_execution_taken_during_a_renewal_is_not_stopped() -> None:
    deps = EngineDependencies(
        executions=cast(Any, SlowRenewals()),
        streams=cast(Any, None),
        tools=cast(Any, None),
        agents=cast(Any, None),
    )
    worker = ExecutionWorker(deps, bus=cast(Any, None), load_graph=cast(Any, None))
    stopped: list[str] = []
    worker.stop_local = lambda execution_id: stopped.append(execution_id) or True  # type: ignore[method-assign]
    worker._generations["exe_old"] = 1
    renewal = asyncio.create_task(worker._renew())
    await asyncio.sleep(0.05)
    worker._generations["exe_new"] = 1  # claimed while the renewal is on its way
    await renewal
    assert stopped == []
