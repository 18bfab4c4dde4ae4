"""PoolService over gRPC: maps messages, calls the service."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.agents.mapping import spec_from_proto
from aster.server.errors import InvalidArgument
from aster.server.pools.mapping import pool_agent_to_proto, stats_to_proto
from aster.server.pools.service import PoolService
from aster.server.tenancy import current_tenant
from aster.v1 import pool_pb2, pool_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class PoolServicer(pool_pb2_grpc.PoolServiceServicer):
    """Pooled agents: add, list, get, warm, remove; the pool's figures."""

    def __init__(self, service: PoolService) -> None:
        self._service = service

    async def CreatePooledAgent(
        self, request: pool_pb2.CreatePooledAgentRequest, context: Context
    ) -> pool_pb2.PoolAgent:
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument("set agent_id or agent", field="agent_id")
        spec = spec_from_proto(request.agent) if source == "agent" else None
        view = await self._service.create(current_tenant(), request.agent_id, spec)
        return pool_agent_to_proto(view)

    async def ListPoolAgents(
        self, request: pool_pb2.ListPoolAgentsRequest, context: Context
    ) -> pool_pb2.ListPoolAgentsResponse:
        page = await self._service.list(
            current_tenant(), request.page_size, request.page_token, request.filter
        )
        return pool_pb2.ListPoolAgentsResponse(
            agents=[pool_agent_to_proto(v) for v in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetPoolAgent(
        self, request: pool_pb2.GetPoolAgentRequest, context: Context
    ) -> pool_pb2.PoolAgent:
        return pool_agent_to_proto(await self._service.get(current_tenant(), request.agent_id))

    async def ResumePoolAgent(
        self, request: pool_pb2.ResumePoolAgentRequest, context: Context
    ) -> pool_pb2.PoolAgent:
        return pool_agent_to_proto(await self._service.resume(current_tenant(), request.agent_id))

    async def RemovePoolAgent(
        self, request: pool_pb2.RemovePoolAgentRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.remove(current_tenant(), request.agent_id)
        return empty_pb2.Empty()

    async def GetPoolStats(
        self, request: pool_pb2.GetPoolStatsRequest, context: Context
    ) -> pool_pb2.PoolStats:
        return stats_to_proto(await self._service.stats(current_tenant()))
