"""The rules of runs: admission (double-texting), streaming, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

from aster.server.agents.models import AgentState
from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition, InvalidArgument, NotFound
from aster.server.ids import check_id, new_id
from aster.server.limits.quotas import Quotas
from aster.server.limits.usage import TokenUsage
from aster.server.observability import aster_metrics
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.runs.dependencies import ToolRunner
from aster.server.runs.event_log import EventLog
from aster.server.runs.executor import RunExecutor
from aster.server.runs.limits import RunLimits
from aster.server.runs.models import (
    AgentActivity,
    AgentRunStats,
    MultitaskStrategy,
    OnDisconnect,
    Run,
    RunEvent,
    RunRequest,
    RunStatus,
)
from aster.server.sessions.models import SessionSpec
from aster.server.sessions.service import SessionService
from aster.server.storage.run_repository import RunRepository

ID_PREFIX = "run"
# How long an INTERRUPT waits for the runs it cancels to end.
INTERRUPT_WAIT_S = 10.0


class RunService:
    """Starts, follows, lists and cancels runs."""

    def __init__(
        self,
        runs: RunRepository,
        sessions: SessionService,
        agents: AgentService,
        tools: ToolRunner,
        log: EventLog,
        executor: RunExecutor,
        limits: RunLimits,
        quotas: Quotas | None = None,
        *,
        token_usage: TokenUsage,
    ) -> None:
        self._runs = runs
        self._sessions = sessions
        self._agents = agents
        self._tools = tools
        self._log = log
        self._executor = executor
        self._limits = limits
        self._quotas = quotas or Quotas()
        # Today's tokens per tenant; the executor charges it as runs finish.
        self._token_usage = token_usage

    async def start(self, tenant: str, request: RunRequest) -> Run:
        """Admits a run and dispatches it; returns it QUEUED."""
        agent = await self._agents.get(tenant, check_id(request.agent_id, "agent_id"))
        if not request.message.strip():
            raise InvalidArgument("message must not be empty", field="message")
        if len(request.message) > self._limits.max_input_chars:
            raise InvalidArgument(
                f"message is longer than {self._limits.max_input_chars} characters",
                field="message",
            )
        if agent.spec.state is AgentState.DISABLED:
            raise FailedPrecondition(f"agent {agent.id!r} is disabled", field="agent_id")
        if agent.spec.tools:
            await self._tools.specs(tenant, agent.spec.tools)
        await self._check_quotas(tenant)
        session_id = await self._session_for(tenant, request)
        run = Run(
            id=new_id(ID_PREFIX),
            tenant=tenant,
            agent_id=agent.id,
            session_id=session_id,
            status=RunStatus.QUEUED,
            input_text=request.message,
            create_time=utcnow(),
            background=request.background,
            on_disconnect=request.on_disconnect,
        )
        strategy = request.multitask_strategy

        def decide(active: list[Run]) -> str:
            if not active:
                return ""
            if strategy is MultitaskStrategy.REJECT:
                raise FailedPrecondition(
                    f"session {session_id!r} has an active run ({active[-1].id}); "
                    "use multitask_strategy ENQUEUE or INTERRUPT, or wait",
                    field="session_id",
                    active_run_id=active[-1].id,
                )
            return active[-1].id

        run, active = await self._runs.admit(tenant, run, decide)
        if strategy is MultitaskStrategy.INTERRUPT:
            for other in active:
                await self._executor.cancel_everywhere(other.id)
        self._executor.dispatch(run)
        return run

    async def _check_quotas(self, tenant: str) -> None:
        quotas = self._quotas
        if quotas.max_concurrent_runs:
            quotas.check("max_concurrent_runs", await self._runs.active_count(tenant), tenant)
        if quotas.max_tokens_per_day:
            used = await self._token_usage.today(tenant)
            quotas.check("max_tokens_per_day", used, tenant)

    async def _session_for(self, tenant: str, request: RunRequest) -> str:
        if not request.session_id:
            session = await self._sessions.create(tenant, SessionSpec(agent_id=request.agent_id))
            return session.id
        check_id(request.session_id, "session_id")
        try:
            session = await self._sessions.get(tenant, request.session_id, "session_id")
        except NotFound:
            raise InvalidArgument(
                f"session {request.session_id!r} does not exist", field="session_id"
            ) from None
        if session.spec.agent_id != request.agent_id:
            raise InvalidArgument(
                f"session {session.id!r} belongs to agent {session.spec.agent_id!r}",
                field="session_id",
            )
        return session.id

    async def get(self, tenant: str, run_id: str) -> Run:
        """One run, or NOT_FOUND."""
        return await self._runs.get(tenant, check_id(run_id, "run_id"))

    async def list(
        self, tenant: str, agent_id: str, session_id: str, size: int, token: str
    ) -> Page[Run]:
        """Runs of an agent and/or a session, newest first."""
        if not agent_id and not session_id:
            raise InvalidArgument("set agent_id or session_id", field="agent_id")
        # Naming another tenant's agent or session is NOT_FOUND, not an empty list.
        if agent_id:
            await self._agents.get(tenant, check_id(agent_id, "agent_id"))
        if session_id:
            await self._sessions.get(tenant, session_id, "session_id")
        limit = page_size(size)
        query = f"agent={agent_id};session={session_id}"
        after = decode_token(token, query)
        runs, more = await self._runs.list_page(tenant, agent_id, session_id, after, limit)
        return next_page(runs, more, query, by_create_time)

    async def events(self, tenant: str, run_id: str, after_seq: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after `after_seq`, stored then live, until its last."""
        if after_seq < 0:
            raise InvalidArgument("after_seq must not be negative", field="after_seq")
        run = await self.get(tenant, run_id)

        async def finished() -> bool:
            return (await self._runs.get(tenant, run_id)).status.terminal

        aster_metrics.ACTIVE_STREAMS.inc()
        try:
            async for event in self._log.follow(run.id, run.session_id, after_seq, finished):
                yield event
        finally:
            aster_metrics.ACTIVE_STREAMS.dec()

    async def stream(self, tenant: str, request: RunRequest) -> AsyncIterator[RunEvent]:
        """Starts a run and streams it. If the caller goes away first, the
        run is cancelled unless `on_disconnect` is CONTINUE."""
        run = await self.start(tenant, request)
        ended = False
        try:
            async for event in self.events(tenant, run.id):
                ended = event.terminal
                yield event
        finally:
            if not ended and request.on_disconnect is not OnDisconnect.CONTINUE:
                # Shielded: the caller's task is being cancelled.
                await asyncio.shield(self._executor.cancel_everywhere(run.id))

    async def run_to_end(self, tenant: str, request: RunRequest) -> Run:
        """Starts a run and waits for its end (cancelled if the caller goes away)."""
        run_id = ""
        async for event in self.stream(tenant, request):
            run_id = event.run_id
        return await self.get(tenant, run_id)

    async def cancel(self, tenant: str, run_id: str) -> Run:
        """Cancels the run wherever it executes; waits briefly for its end."""
        run = await self.get(tenant, run_id)
        if run.status.terminal:
            return run
        await self._executor.cancel_everywhere(run.id)
        if run.status is RunStatus.QUEUED:
            # Queued and held by no worker (rescued, or between claims).
            await self._executor.cancel_unstarted(run)
        try:
            async with asyncio.timeout(INTERRUPT_WAIT_S):
                async for _ in self.events(tenant, run.id, run.last_seq):
                    pass
        except TimeoutError:
            pass
        return await self.get(tenant, run.id)

    async def activity(self, tenant: str, agent_id: str) -> AgentActivity:
        """Whether the agent is running, and its last activity."""
        agent = await self._agents.get(tenant, agent_id)
        active, last = await self._runs.agent_activity(tenant, agent.id)
        return AgentActivity(agent.id, active, last)

    async def agent_stats(self, tenant: str, agent_id: str) -> AgentRunStats:
        """Runs by status, tokens and time to first token of the agent."""
        agent = await self._agents.get(tenant, agent_id)
        by_status, tokens_in, tokens_out, ttft = await self._runs.agent_stats(tenant, agent.id)
        return AgentRunStats(agent.id, by_status, tokens_in, tokens_out, ttft)

    async def prune_events(self, retention_s: float) -> int:
        """Deletes the events of runs that ended more than `retention_s` ago."""
        return await self._runs.prune_events(utcnow() - timedelta(seconds=retention_s))
