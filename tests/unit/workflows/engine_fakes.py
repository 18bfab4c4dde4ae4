"""An ExecutionRun on fakes: the engine alone, against whatever repository
a test gives it."""

from __future__ import annotations

from typing import Any, cast

from aster.server.clock import utcnow
from aster.server.workflows.engine import EngineDependencies, ExecutionRun
from aster.server.workflows.execution_models import Execution, ExecutionState, StepAttempt
from aster.server.workflows.graph import WorkflowGraph


class Streams:
    """A stream log that publishes nothing."""

    async def publish(self, events: Any) -> None:
        return None


def execution_run(
    repository: object,
    graph: WorkflowGraph | None = None,
    steps: list[StepAttempt] | None = None,
) -> ExecutionRun:
    """Execution `exe_1` of tenant `t1`, taken by worker `w1`."""
    deps = EngineDependencies(
        executions=cast(Any, repository),
        streams=cast(Any, Streams()),
        tools=cast(Any, None),
        agents=cast(Any, None),
    )
    execution = Execution(
        id="exe_1",
        tenant="t1",
        workflow_id="wf_1",
        workflow_version=1,
        state=ExecutionState.RUNNING,
        input={},
        create_time=utcnow(),
        steps=steps or [],
    )
    return ExecutionRun(deps, execution, cast(Any, graph), owner="w1")
