"""Semantic-memory messages ⇄ domain types."""

from __future__ import annotations

from aster.server.memory.semantic_models import (
    ConsolidationReport,
    Memory,
    MemorySource,
    NewMemory,
    Provenance,
    Scope,
    SearchHit,
    SearchQuery,
)
from aster.server.rpc.convert import dict_to_struct, struct_to_dict, timestamp
from aster.v1 import memory_pb2


def new_memory_from_proto(message: memory_pb2.Memory) -> NewMemory:
    """The caller-settable fields of a Memory: text, metadata, scope, source
    (a caller cannot claim a promotion: `working_memory_entry_id` is dropped)."""
    return NewMemory(
        text=message.text,
        metadata=struct_to_dict(message.metadata, "memory.metadata"),
        scope=Scope(message.agent_id, message.session_id, message.room_id),
        source=MemorySource(
            run_id=message.source.run_id,
            session_id=message.source.session_id,
            message_id=message.source.message_id,
            tool_call_id=message.source.tool_call_id,
        ),
    )


def search_from_proto(message: memory_pb2.SearchMemoryRequest) -> SearchQuery:
    """A SearchMemory request as a query."""
    return SearchQuery(
        query=message.query,
        top_k=message.top_k,
        scope=Scope(message.agent_id, message.session_id, message.room_id),
        metadata_filter=struct_to_dict(message.metadata_filter, "metadata_filter"),
        min_score=message.min_score if message.HasField("min_score") else None,
        include_superseded=message.include_superseded,
    )


def source_to_proto(source: MemorySource) -> memory_pb2.MemorySource:
    """The source message."""
    return memory_pb2.MemorySource(
        run_id=source.run_id,
        session_id=source.session_id,
        message_id=source.message_id,
        tool_call_id=source.tool_call_id,
        working_memory_entry_id=source.working_memory_entry_id,
    )


def memory_to_proto(memory: Memory) -> memory_pb2.Memory:
    """The full message of a stored memory."""
    return memory_pb2.Memory(
        id=memory.id,
        text=memory.text,
        metadata=dict_to_struct(memory.metadata),
        agent_id=memory.scope.agent_id,
        session_id=memory.scope.session_id,
        room_id=memory.scope.room_id,
        source=source_to_proto(memory.source),
        embedder=memory.embedder,
        embedder_version=memory.embedder_version,
        superseded_by=memory.superseded_by,
        consolidated_from=list(memory.consolidated_from),
        create_time=timestamp(memory.create_time),
    )


def hit_to_proto(hit: SearchHit) -> memory_pb2.MemorySearchResult:
    """One search result."""
    return memory_pb2.MemorySearchResult(memory=memory_to_proto(hit.memory), score=hit.score)


def provenance_to_proto(provenance: Provenance) -> memory_pb2.MemoryProvenance:
    """A provenance record with its lineage."""
    memory = provenance.memory
    return memory_pb2.MemoryProvenance(
        memory_id=memory.id,
        tenant_id=provenance.tenant,
        agent_id=memory.scope.agent_id,
        session_id=memory.scope.session_id,
        room_id=memory.scope.room_id,
        source=source_to_proto(memory.source),
        create_time=timestamp(memory.create_time),
        embedder=memory.embedder,
        embedder_version=memory.embedder_version,
        consolidated_from=[provenance_to_proto(p) for p in provenance.consolidated_from],
    )


def report_to_proto(report: ConsolidationReport) -> memory_pb2.ConsolidateMemoryResponse:
    """What a consolidation changed."""
    return memory_pb2.ConsolidateMemoryResponse(
        merged_ids=list(report.merged_ids),
        created_ids=list(report.created_ids),
        superseded_ids=list(report.superseded_ids),
    )
