"""AgentService over gRPC: validates shapes, maps messages, calls the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.agents.mapping import agent_to_proto, set_fields, spec_from_proto
from aster.server.agents.service import AgentService
from aster.server.errors import InvalidArgument
from aster.server.pools.service import PoolService
from aster.server.rpc.convert import timestamp
from aster.server.runs.mapping import event_to_proto, run_request, run_to_proto
from aster.server.runs.service import RunService
from aster.server.tenancy import current_tenant
from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Agents (CRUD, status, stats) and their runs (chat, unary, background,
    joining, cancelling)."""

    def __init__(self, service: AgentService, runs: RunService, pools: PoolService) -> None:
        self._service = service
        self._pools = pools
        self._runs = runs

    async def CreateAgent(
        self, request: agent_pb2.CreateAgentRequest, context: Context
    ) -> agent_pb2.Agent:
        if not request.HasField("agent"):
            raise InvalidArgument("agent is required", field="agent")
        agent = await self._service.create(
            current_tenant(), spec_from_proto(request.agent), request.agent_id
        )
        return agent_to_proto(agent)

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: Context
    ) -> agent_pb2.Agent:
        return agent_to_proto(await self._service.get(current_tenant(), request.id))

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: Context
    ) -> agent_pb2.ListAgentsResponse:
        page = await self._service.list(
            current_tenant(), request.page_size, request.page_token, request.filter
        )
        return agent_pb2.ListAgentsResponse(
            agents=[agent_to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def UpdateAgent(
        self, request: agent_pb2.UpdateAgentRequest, context: Context
    ) -> agent_pb2.Agent:
        if not request.HasField("agent"):
            raise InvalidArgument("agent is required", field="agent")
        paths = list(request.update_mask.paths) or set_fields(request.agent)
        agent = await self._service.update(
            current_tenant(),
            request.agent.id,
            spec_from_proto(request.agent),
            paths,
            request.agent.etag,
        )
        return agent_to_proto(agent)

    async def DeleteAgent(
        self, request: agent_pb2.DeleteAgentRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_tenant(), request.id, request.etag)
        return empty_pb2.Empty()

    async def RunAgent(
        self, request: agent_pb2.RunAgentRequest, context: Context
    ) -> agent_pb2.RunAgentResponse:
        run = await self._runs.run_to_end(current_tenant(), run_request(request))
        return agent_pb2.RunAgentResponse(run=run_to_proto(run))

    async def SendMessage(
        self, request: agent_pb2.SendMessageRequest, context: Context
    ) -> run_pb2.Run:
        run = await self._runs.start(current_tenant(), run_request(request, background=True))
        return run_to_proto(run)

    async def Chat(
        self, request: agent_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[run_pb2.ChatEvent]:
        async for event in self._runs.stream(current_tenant(), run_request(request)):
            yield event_to_proto(event)

    async def GetAgentStatus(
        self, request: agent_pb2.GetAgentStatusRequest, context: Context
    ) -> agent_pb2.AgentStatus:
        activity = await self._runs.activity(current_tenant(), request.id)
        status = agent_pb2.AgentStatus(
            agent_id=activity.agent_id,
            activity=(
                agent_pb2.AGENT_ACTIVITY_RUNNING
                if activity.active_runs
                else agent_pb2.AGENT_ACTIVITY_IDLE
            ),
            active_runs=activity.active_runs,
        )
        if activity.last_activity_time is not None:
            status.last_activity_time.CopyFrom(timestamp(activity.last_activity_time))
        return status

    async def ResumeAgent(
        self, request: agent_pb2.ResumeAgentRequest, context: Context
    ) -> agent_pb2.AgentStatus:
        await self._pools.resume_agent(current_tenant(), request.id)
        return await self.GetAgentStatus(agent_pb2.GetAgentStatusRequest(id=request.id), context)

    async def GetAgentStats(
        self, request: agent_pb2.GetAgentStatsRequest, context: Context
    ) -> agent_pb2.AgentStats:
        stats = await self._runs.agent_stats(current_tenant(), request.id)
        return agent_pb2.AgentStats(
            agent_id=stats.agent_id,
            runs_by_status={f"RUN_STATUS_{k}": v for k, v in stats.runs_by_status.items()},
            usage=run_pb2.Usage(input_tokens=stats.input_tokens, output_tokens=stats.output_tokens),
            avg_time_to_first_token_ms=stats.avg_time_to_first_token_ms,
        )

    async def GetRun(self, request: agent_pb2.GetRunRequest, context: Context) -> run_pb2.Run:
        return run_to_proto(await self._runs.get(current_tenant(), request.run_id))

    async def ListRuns(
        self, request: agent_pb2.ListRunsRequest, context: Context
    ) -> agent_pb2.ListRunsResponse:
        page = await self._runs.list(
            current_tenant(),
            request.agent_id,
            request.session_id,
            request.page_size,
            request.page_token,
        )
        return agent_pb2.ListRunsResponse(
            runs=[run_to_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def StreamRun(
        self, request: agent_pb2.StreamRunRequest, context: Context
    ) -> AsyncIterator[run_pb2.ChatEvent]:
        async for event in self._runs.events(current_tenant(), request.run_id, request.after_seq):
            yield event_to_proto(event)

    async def CancelRun(self, request: agent_pb2.CancelRunRequest, context: Context) -> run_pb2.Run:
        return run_to_proto(await self._runs.cancel(current_tenant(), request.run_id))
