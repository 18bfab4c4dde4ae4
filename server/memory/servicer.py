"""MemoryService over gRPC: working memory and semantic memory, each in its
own mixin."""

from __future__ import annotations

from aster.server.memory.semantic_servicer import SemanticMemory, SemanticMemoryRpcs
from aster.server.memory.working_service import WorkingMemoryService
from aster.server.memory.working_servicer import WorkingMemoryRpcs
from aster.v1 import memory_pb2_grpc


class MemoryServicer(WorkingMemoryRpcs, SemanticMemoryRpcs, memory_pb2_grpc.MemoryServiceServicer):
    """The MemoryService RPCs."""

    def __init__(self, working: WorkingMemoryService, semantic: SemanticMemory) -> None:
        self._working = working
        self._semantic = semantic
