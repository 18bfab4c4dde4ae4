"""SessionService over gRPC."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.errors import InvalidArgument
from aster.server.rpc.convert import timestamp
from aster.server.sessions.mapping import (
    checkpoint_to_proto,
    message_to_proto,
    session_to_proto,
    set_fields,
    spec_from_proto,
)
from aster.server.sessions.service import SessionService
from aster.server.tenancy import current_tenant
from aster.v1 import run_pb2, session_pb2, session_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    """Sessions, their history and checkpoints."""

    def __init__(self, service: SessionService) -> None:
        self._service = service

    async def CreateSession(
        self, request: session_pb2.CreateSessionRequest, context: Context
    ) -> session_pb2.Session:
        if not request.HasField("session"):
            raise InvalidArgument("session is required", field="session")
        session = await self._service.create(
            current_tenant(), spec_from_proto(request.session), request.session_id
        )
        return session_to_proto(session)

    async def GetSession(
        self, request: session_pb2.GetSessionRequest, context: Context
    ) -> session_pb2.Session:
        return session_to_proto(await self._service.get(current_tenant(), request.id))

    async def ListSessions(
        self, request: session_pb2.ListSessionsRequest, context: Context
    ) -> session_pb2.ListSessionsResponse:
        agent_id = ""
        text = request.filter.strip()
        if text:
            key, _, value = text.partition("=")
            if key.strip() != "agent_id" or not value.strip():
                raise InvalidArgument("filter: only agent_id=<id> is supported", field="filter")
            agent_id = value.strip().strip('"')
        page = await self._service.list(
            current_tenant(), request.page_size, request.page_token, agent_id
        )
        return session_pb2.ListSessionsResponse(
            sessions=[session_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateSession(
        self, request: session_pb2.UpdateSessionRequest, context: Context
    ) -> session_pb2.Session:
        if not request.HasField("session"):
            raise InvalidArgument("session is required", field="session")
        paths = list(request.update_mask.paths) or set_fields(request.session)
        session = await self._service.update(
            current_tenant(),
            request.session.id,
            spec_from_proto(request.session),
            [p for p in paths if p != "agent_id"],
            request.session.etag,
        )
        return session_to_proto(session)

    async def DeleteSession(
        self, request: session_pb2.DeleteSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_tenant(), request.id, request.etag)
        return empty_pb2.Empty()

    async def ListMessages(
        self, request: session_pb2.ListMessagesRequest, context: Context
    ) -> session_pb2.ListMessagesResponse:
        page = await self._service.messages(
            current_tenant(),
            request.session_id,
            request.page_size,
            request.page_token,
            request.order == session_pb2.MESSAGE_ORDER_NEWEST_FIRST,
        )
        return session_pb2.ListMessagesResponse(
            messages=[message_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def ListCheckpoints(
        self, request: session_pb2.ListCheckpointsRequest, context: Context
    ) -> session_pb2.ListCheckpointsResponse:
        page = await self._service.checkpoints(
            current_tenant(), request.session_id, request.page_size, request.page_token
        )
        return session_pb2.ListCheckpointsResponse(
            checkpoints=[checkpoint_to_proto(c) for c in page.items],
            next_page_token=page.next_page_token,
        )

    async def ResumeSession(
        self, request: session_pb2.ResumeSessionRequest, context: Context
    ) -> session_pb2.ResumeSessionResponse:
        session, checkpoint = await self._service.resume(
            current_tenant(), request.session_id, request.checkpoint_id
        )
        return session_pb2.ResumeSessionResponse(
            session=session_to_proto(session), checkpoint=checkpoint_to_proto(checkpoint)
        )

    async def ForkSession(
        self, request: session_pb2.ForkSessionRequest, context: Context
    ) -> session_pb2.Session:
        session = await self._service.fork(
            current_tenant(), request.session_id, request.checkpoint_id, request.new_session_id
        )
        return session_to_proto(session)

    async def GetSessionStats(
        self, request: session_pb2.GetSessionStatsRequest, context: Context
    ) -> session_pb2.SessionStats:
        stats = await self._service.stats(current_tenant(), request.session_id)
        message = session_pb2.SessionStats(
            session_id=stats.session_id,
            message_count=stats.message_count,
            run_count=stats.run_count,
            usage=run_pb2.Usage(input_tokens=stats.input_tokens, output_tokens=stats.output_tokens),
        )
        if stats.last_activity_time is not None:
            message.last_activity_time.CopyFrom(timestamp(stats.last_activity_time))
        return message
