"""WorkflowService over gRPC: definitions and executions, each in its own
mixin."""

from __future__ import annotations

from typing import Any

from aster.server.workflows.definition_servicer import WorkflowDefinitionRpcs
from aster.server.workflows.execution_servicer import WorkflowExecutionRpcs
from aster.v1 import workflow_pb2_grpc


class WorkflowServicer(
    WorkflowDefinitionRpcs, WorkflowExecutionRpcs, workflow_pb2_grpc.WorkflowServiceServicer
):
    """The WorkflowService RPCs."""

    def __init__(self, definitions: Any, executions: Any) -> None:
        self._definitions = definitions
        self._executions = executions
