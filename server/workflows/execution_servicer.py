"""The execution RPCs of WorkflowService (a mixin of WorkflowServicer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from aster.server.rpc.convert import struct_to_dict
from aster.server.tenancy import current_tenant
from aster.server.workflows.execution_mapping import event_to_proto, execution_to_proto
from aster.server.workflows.execution_service import ExecutionService
from aster.v1 import workflow_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class WorkflowExecutionRpcs:
    """ExecuteWorkflow, List/GetExecution, the control RPCs and
    WatchExecution over `self._executions`."""

    _executions: ExecutionService

    async def ExecuteWorkflow(
        self, request: workflow_pb2.ExecuteWorkflowRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.execute(
            current_tenant(),
            request.workflow_id,
            struct_to_dict(request.input, "input"),
            request.idempotency_key,
        )
        return execution_to_proto(execution)

    async def ListExecutions(
        self, request: workflow_pb2.ListExecutionsRequest, context: Context
    ) -> workflow_pb2.ListExecutionsResponse:
        page = await self._executions.list(
            current_tenant(),
            request.workflow_id,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return workflow_pb2.ListExecutionsResponse(
            executions=[execution_to_proto(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetExecution(
        self, request: workflow_pb2.GetExecutionRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.get(
            current_tenant(), request.workflow_id, request.execution_id
        )
        return execution_to_proto(execution)

    async def ApproveExecution(
        self, request: workflow_pb2.ApproveExecutionRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.approve(
            current_tenant(),
            request.workflow_id,
            request.execution_id,
            request.step_name,
            struct_to_dict(request.input, "input"),
        )
        return execution_to_proto(execution)

    async def RejectExecution(
        self, request: workflow_pb2.RejectExecutionRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.reject(
            current_tenant(),
            request.workflow_id,
            request.execution_id,
            request.step_name,
            request.reason,
        )
        return execution_to_proto(execution)

    async def SuspendExecution(
        self, request: workflow_pb2.SuspendExecutionRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.suspend(
            current_tenant(), request.workflow_id, request.execution_id
        )
        return execution_to_proto(execution)

    async def ResumeExecution(
        self, request: workflow_pb2.ResumeExecutionRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.resume(
            current_tenant(),
            request.workflow_id,
            request.execution_id,
            struct_to_dict(request.input, "input"),
        )
        return execution_to_proto(execution)

    async def CancelExecution(
        self, request: workflow_pb2.CancelExecutionRequest, context: Context
    ) -> workflow_pb2.Execution:
        execution = await self._executions.cancel(
            current_tenant(), request.workflow_id, request.execution_id
        )
        return execution_to_proto(execution)

    async def WatchExecution(
        self, request: workflow_pb2.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[workflow_pb2.ExecutionEvent]:
        async for event in self._executions.watch(
            current_tenant(), request.workflow_id, request.execution_id, request.after_seq
        ):
            yield event_to_proto(event, request.workflow_id)
