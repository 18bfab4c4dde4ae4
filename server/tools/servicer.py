"""ToolService over gRPC: validates shapes, maps messages, calls the service."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.errors import InvalidArgument
from aster.server.tenancy import current_tenant
from aster.server.tools.mapping import (
    arguments_from_proto,
    definition_from_proto,
    outcome_to_proto,
    set_fields,
    tool_to_proto,
)
from aster.server.tools.service import ToolService
from aster.v1 import tool_pb2, tool_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class ToolServicer(tool_pb2_grpc.ToolServiceServicer):
    """Every method of ToolService: the registry and ExecuteTool."""

    def __init__(self, service: ToolService) -> None:
        self._service = service

    async def CreateTool(
        self, request: tool_pb2.CreateToolRequest, context: Context
    ) -> tool_pb2.Tool:
        if not request.HasField("tool"):
            raise InvalidArgument("tool is required", field="tool")
        tool = await self._service.create(
            current_tenant(), definition_from_proto(request.tool), request.tool_id
        )
        return tool_to_proto(tool)

    async def GetTool(self, request: tool_pb2.GetToolRequest, context: Context) -> tool_pb2.Tool:
        return tool_to_proto(await self._service.get(current_tenant(), request.id))

    async def ListTools(
        self, request: tool_pb2.ListToolsRequest, context: Context
    ) -> tool_pb2.ListToolsResponse:
        page = await self._service.list(
            current_tenant(), request.page_size, request.page_token, request.filter
        )
        return tool_pb2.ListToolsResponse(
            tools=[tool_to_proto(t) for t in page.tools], next_page_token=page.next_page_token
        )

    async def UpdateTool(
        self, request: tool_pb2.UpdateToolRequest, context: Context
    ) -> tool_pb2.Tool:
        if not request.HasField("tool"):
            raise InvalidArgument("tool is required", field="tool")
        paths = list(request.update_mask.paths) or set_fields(request.tool)
        tool = await self._service.update(
            current_tenant(),
            request.tool.id,
            definition_from_proto(request.tool),
            paths,
            request.tool.etag,
        )
        return tool_to_proto(tool)

    async def DeleteTool(
        self, request: tool_pb2.DeleteToolRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_tenant(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ExecuteTool(
        self, request: tool_pb2.ExecuteToolRequest, context: Context
    ) -> tool_pb2.ExecuteToolResponse:
        outcome = await self._service.execute(
            current_tenant(),
            request.tool_id,
            arguments_from_proto(request.arguments),
            request.idempotency_key,
        )
        return outcome_to_proto(outcome)
