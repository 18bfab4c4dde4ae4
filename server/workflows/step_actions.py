"""What agent and tool steps do: run an agent through the run machinery
(forwarding its events into the execution's stream), call a tool with an
idempotency key."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from aster.server.errors import AsterError
from aster.server.runs.dependencies import ToolRunner
from aster.server.runs.models import OnDisconnect, RunEvent, RunRequest, RunStatus
from aster.server.runs.service import RunService
from aster.server.tools.call_context import ToolCallContext, tool_call_scope

MAX_KEY = 255


class StepError(Exception):
    """An attempt of a step failed; the message says why (retryable)."""


def tool_idempotency_key(execution_id: str, key: str, attempt: int) -> str:
    """The key a tool step's attempt passes to the tool: the execution, the
    step's key and the attempt (hashed when longer than tools accept)."""
    text = f"{execution_id}:{key}:{attempt}"
    if len(text) <= MAX_KEY:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{execution_id}:{digest}:{attempt}"


async def call_tool(
    tools: ToolRunner,
    tenant: str,
    tool_id: str,
    arguments: dict[str, Any],
    idempotency_key: str,
    extra: dict[str, str],
) -> Any:
    """Calls the tool once; its error becomes a StepError."""
    context = ToolCallContext(
        tenant=tenant,
        agent_id="",
        session_id="",
        run_id="",
        tool_call_id=idempotency_key,
        extra=extra,
    )
    try:
        with tool_call_scope(context):
            result = await tools.execute(tenant, tool_id, arguments, idempotency_key)
    except AsterError as err:
        raise StepError(err.message) from None
    if result.error:
        raise StepError(result.error)
    return result.output


class AgentStepRunner:
    """Runs an agent step as a run of the agent, in a session of its own."""

    def __init__(self, runs: RunService) -> None:
        self._runs = runs
        self._cancels: set[asyncio.Task[Any]] = set()

    async def run(
        self,
        tenant: str,
        agent_id: str,
        message: str,
        started: Callable[[str], Awaitable[None]],
        forward: Callable[[RunEvent], Awaitable[None]],
    ) -> str:
        """Starts the run, tells `started` its id, hands each of its events
        to `forward`, and returns its result text. A run that does not
        complete is a StepError; cancelling this cancels the run."""
        if not message.strip():
            raise StepError("the agent step's input renders to an empty message")
        try:
            run = await self._runs.start(
                tenant,
                RunRequest(
                    agent_id=agent_id,
                    message=message,
                    on_disconnect=OnDisconnect.CONTINUE,
                    background=True,
                ),
            )
        except AsterError as err:
            raise StepError(err.message) from None
        try:
            await started(run.id)
            async for event in self._runs.events(tenant, run.id):
                await forward(event)
        except asyncio.CancelledError:
            self._cancel_later(tenant, run.id)
            raise
        except BaseException:
            self._cancel_later(tenant, run.id)
            raise
        ended = await self._runs.get(tenant, run.id)
        if ended.status is not RunStatus.COMPLETED:
            raise StepError(
                f"run {run.id} of agent {agent_id!r} ended {ended.status.value}"
                + (f": {ended.error}" if ended.error else "")
            )
        return ended.result_text

    def cancel_run(self, tenant: str, run_id: str) -> None:
        """Cancels a run an earlier attempt started, in the background."""
        self._cancel_later(tenant, run_id)

    def _cancel_later(self, tenant: str, run_id: str) -> None:
        """Cancels the run in the background (this task is being cancelled)."""
        task = asyncio.create_task(self._runs.cancel(tenant, run_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
