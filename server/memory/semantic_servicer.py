"""The semantic-memory RPCs of MemoryService (a mixin of MemoryServicer)."""

from __future__ import annotations

from typing import Any

import grpc

from aster.server.errors import InvalidArgument
from aster.server.memory.consolidation import Consolidator
from aster.server.memory.semantic_mapping import (
    hit_to_proto,
    memory_to_proto,
    new_memory_from_proto,
    provenance_to_proto,
    report_to_proto,
    search_from_proto,
)
from aster.server.memory.semantic_models import Scope
from aster.server.memory.semantic_service import SemanticMemoryService
from aster.server.tenancy import current_tenant
from aster.v1 import memory_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class SemanticMemory:
    """What the semantic RPCs call: the service and its consolidator."""

    def __init__(self, service: SemanticMemoryService, consolidator: Consolidator) -> None:
        self.service = service
        self.consolidator = consolidator

    async def aclose(self) -> None:
        """Releases the embedder."""
        await self.service.aclose()


class SemanticMemoryRpcs:
    """AddMemory, SearchMemory, GetProvenance and ConsolidateMemory."""

    _semantic: SemanticMemory

    async def AddMemory(
        self, request: memory_pb2.AddMemoryRequest, context: Context
    ) -> memory_pb2.Memory:
        if not request.HasField("memory"):
            raise InvalidArgument("memory is required", field="memory")
        memory = await self._semantic.service.add(
            current_tenant(), new_memory_from_proto(request.memory), request.memory_id
        )
        return memory_to_proto(memory)

    async def SearchMemory(
        self, request: memory_pb2.SearchMemoryRequest, context: Context
    ) -> memory_pb2.SearchMemoryResponse:
        hits = await self._semantic.service.search(current_tenant(), search_from_proto(request))
        return memory_pb2.SearchMemoryResponse(results=[hit_to_proto(h) for h in hits])

    async def GetProvenance(
        self, request: memory_pb2.GetProvenanceRequest, context: Context
    ) -> memory_pb2.MemoryProvenance:
        provenance = await self._semantic.service.provenance(current_tenant(), request.memory_id)
        return provenance_to_proto(provenance)

    async def ConsolidateMemory(
        self, request: memory_pb2.ConsolidateMemoryRequest, context: Context
    ) -> memory_pb2.ConsolidateMemoryResponse:
        report = await self._semantic.consolidator.consolidate(
            current_tenant(),
            Scope(request.agent_id, request.session_id, request.room_id),
            request.similarity_threshold,
            request.promote_working,
        )
        return report_to_proto(report)
