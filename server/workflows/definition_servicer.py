"""The definition RPCs of WorkflowService (a mixin of WorkflowServicer)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.errors import InvalidArgument
from aster.server.tenancy import current_tenant
from aster.server.workflows.definition_service import WorkflowService
from aster.server.workflows.mapping import set_fields, spec_from_proto, workflow_to_proto
from aster.v1 import workflow_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class WorkflowDefinitionRpcs:
    """Create/List/Get/Update/DeleteWorkflow over `self._definitions`."""

    _definitions: WorkflowService

    async def CreateWorkflow(
        self, request: workflow_pb2.CreateWorkflowRequest, context: Context
    ) -> workflow_pb2.Workflow:
        if not request.HasField("workflow"):
            raise InvalidArgument("workflow is required", field="workflow")
        workflow = await self._definitions.create(
            current_tenant(), spec_from_proto(request.workflow), request.workflow_id
        )
        return workflow_to_proto(workflow)

    async def GetWorkflow(
        self, request: workflow_pb2.GetWorkflowRequest, context: Context
    ) -> workflow_pb2.Workflow:
        return workflow_to_proto(await self._definitions.get(current_tenant(), request.id))

    async def ListWorkflows(
        self, request: workflow_pb2.ListWorkflowsRequest, context: Context
    ) -> workflow_pb2.ListWorkflowsResponse:
        page = await self._definitions.list(
            current_tenant(), request.page_size, request.page_token, request.filter
        )
        return workflow_pb2.ListWorkflowsResponse(
            workflows=[workflow_to_proto(w) for w in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateWorkflow(
        self, request: workflow_pb2.UpdateWorkflowRequest, context: Context
    ) -> workflow_pb2.Workflow:
        if not request.HasField("workflow"):
            raise InvalidArgument("workflow is required", field="workflow")
        paths = list(request.update_mask.paths) or set_fields(request.workflow)
        workflow = await self._definitions.update(
            current_tenant(),
            request.workflow.id,
            spec_from_proto(request.workflow),
            paths,
            request.workflow.etag,
        )
        return workflow_to_proto(workflow)

    async def DeleteWorkflow(
        self, request: workflow_pb2.DeleteWorkflowRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._definitions.delete(current_tenant(), request.id, request.etag)
        return empty_pb2.Empty()
