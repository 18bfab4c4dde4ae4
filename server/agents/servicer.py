"""AgentService over gRPC: validates shapes, maps messages, calls the service."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.agents.mapping import agent_to_proto, set_fields, spec_from_proto
from aster.server.agents.service import AgentService
from aster.server.errors import InvalidArgument
from aster.server.tenancy import current_tenant
from aster.v1 import agent_pb2, agent_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

# RPCs of AgentService that later work implements, by area.
PENDING_AREAS = {"ResumeAgent": "pools"}
PENDING_DEFAULT_AREA = "runs"


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """The agent CRUD methods; the run methods arrive with the runs area."""

    def __init__(self, service: AgentService) -> None:
        self._service = service

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
            agents=[agent_to_proto(a) for a in page.agents], next_page_token=page.next_page_token
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
