"""The working-memory RPCs of MemoryService (a mixin of MemoryServicer)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.errors import InvalidArgument
from aster.server.memory.working_mapping import (
    entry_to_proto,
    entry_value_from_proto,
    scope_of,
    set_fields,
)
from aster.server.memory.working_models import Writer
from aster.server.memory.working_service import WorkingMemoryService
from aster.server.tenancy import current_principal, current_tenant
from aster.v1 import memory_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def _api_writer() -> Writer:
    principal = current_principal()
    return Writer(principal=principal.subject if principal is not None else "")


class WorkingMemoryRpcs:
    """SetWorkingMemory, List/Get/Update/Delete entries and ClearWorkingMemory."""

    _working: WorkingMemoryService

    async def SetWorkingMemory(
        self, request: memory_pb2.SetWorkingMemoryRequest, context: Context
    ) -> memory_pb2.WorkingMemoryEntry:
        if not request.HasField("entry"):
            raise InvalidArgument("entry is required", field="entry")
        entry = await self._working.set(
            current_tenant(),
            scope_of(request.entry),
            request.entry.key,
            entry_value_from_proto(request.entry, required=True),
            etag=request.entry.etag,
            if_absent=request.if_absent,
            writer=_api_writer(),
        )
        return entry_to_proto(entry)

    async def ListWorkingMemoryEntries(
        self, request: memory_pb2.ListWorkingMemoryEntriesRequest, context: Context
    ) -> memory_pb2.ListWorkingMemoryEntriesResponse:
        page = await self._working.list(
            current_tenant(),
            scope_of(request),
            request.prefix,
            request.page_size,
            request.page_token,
        )
        return memory_pb2.ListWorkingMemoryEntriesResponse(
            entries=[entry_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )

    async def GetWorkingMemoryEntry(
        self, request: memory_pb2.GetWorkingMemoryEntryRequest, context: Context
    ) -> memory_pb2.WorkingMemoryEntry:
        return entry_to_proto(await self._working.get(current_tenant(), request.id))

    async def UpdateWorkingMemoryEntry(
        self, request: memory_pb2.UpdateWorkingMemoryEntryRequest, context: Context
    ) -> memory_pb2.WorkingMemoryEntry:
        if not request.HasField("entry"):
            raise InvalidArgument("entry is required", field="entry")
        entry = await self._working.update(
            current_tenant(),
            request.entry.id,
            entry_value_from_proto(request.entry, required=False),
            list(request.update_mask.paths) or set_fields(request.entry),
            request.entry.etag,
            _api_writer(),
        )
        return entry_to_proto(entry)

    async def DeleteWorkingMemoryEntry(
        self, request: memory_pb2.DeleteWorkingMemoryEntryRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._working.delete(current_tenant(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ClearWorkingMemory(
        self, request: memory_pb2.ClearWorkingMemoryRequest, context: Context
    ) -> memory_pb2.ClearWorkingMemoryResponse:
        deleted = await self._working.clear(current_tenant(), scope_of(request))
        return memory_pb2.ClearWorkingMemoryResponse(deleted_count=deleted)
