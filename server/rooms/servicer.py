"""RoomService over gRPC: validates shapes, maps messages, calls the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from aster.server.errors import InvalidArgument
from aster.server.rooms.mapping import (
    event_to_proto,
    member_to_proto,
    message_to_proto,
    room_to_proto,
    run_to_proto,
    speaker_of,
    spec_from_proto,
)
from aster.server.rooms.service import RoomService
from aster.server.rooms.validation import parse_role, parse_strategy
from aster.server.tenancy import current_tenant
from aster.v1 import room_pb2, room_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class RoomServicer(room_pb2_grpc.RoomServiceServicer):
    """Rooms, their members, talk, the live stream and collaborations."""

    def __init__(self, service: RoomService) -> None:
        self._service = service

    async def CreateRoom(
        self, request: room_pb2.CreateRoomRequest, context: Context
    ) -> room_pb2.Room:
        if not request.HasField("room"):
            raise InvalidArgument("room is required", field="room")
        room = await self._service.create(
            current_tenant(), spec_from_proto(request.room), request.room_id
        )
        return room_to_proto(room)

    async def GetRoom(self, request: room_pb2.GetRoomRequest, context: Context) -> room_pb2.Room:
        return room_to_proto(await self._service.get(current_tenant(), request.id))

    async def ListRooms(
        self, request: room_pb2.ListRoomsRequest, context: Context
    ) -> room_pb2.ListRoomsResponse:
        page = await self._service.list(
            current_tenant(), request.page_size, request.page_token, request.filter
        )
        return room_pb2.ListRoomsResponse(
            rooms=[room_to_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def DeleteRoom(
        self, request: room_pb2.DeleteRoomRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.delete(current_tenant(), request.id, request.etag)
        return empty_pb2.Empty()

    async def JoinRoom(
        self, request: room_pb2.JoinRoomRequest, context: Context
    ) -> room_pb2.RoomMember:
        member = await self._service.join(
            current_tenant(), request.room_id, speaker_of(request), parse_role(request.role)
        )
        return member_to_proto(member)

    async def LeaveRoom(
        self, request: room_pb2.LeaveRoomRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._service.leave(current_tenant(), request.room_id, speaker_of(request))
        return empty_pb2.Empty()

    async def Say(self, request: room_pb2.SayRequest, context: Context) -> room_pb2.RoomMessage:
        message = await self._service.say(
            current_tenant(),
            request.room_id,
            speaker_of(request),
            request.text,
            list(request.mentions),
        )
        return message_to_proto(message)

    async def ListMembers(
        self, request: room_pb2.ListMembersRequest, context: Context
    ) -> room_pb2.ListMembersResponse:
        page = await self._service.members(
            current_tenant(), request.room_id, request.page_size, request.page_token
        )
        return room_pb2.ListMembersResponse(
            members=[member_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetHistory(
        self, request: room_pb2.GetHistoryRequest, context: Context
    ) -> room_pb2.GetHistoryResponse:
        page = await self._service.history(
            current_tenant(), request.room_id, request.page_size, request.page_token
        )
        return room_pb2.GetHistoryResponse(
            messages=[message_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def StreamRoom(
        self, request: room_pb2.StreamRoomRequest, context: Context
    ) -> AsyncIterator[room_pb2.RoomEvent]:
        async for event in self._service.stream(
            current_tenant(), request.room_id, request.after_seq, request.room_run_id
        ):
            yield event_to_proto(request.room_id, event)

    async def RunRoom(self, request: room_pb2.RunRoomRequest, context: Context) -> room_pb2.RoomRun:
        run = await self._service.run(
            current_tenant(),
            request.room_id,
            request.task,
            parse_strategy(request.strategy),
            request.max_turns,
            request.stop_condition,
        )
        return run_to_proto(run)

    async def GetRoomRun(
        self, request: room_pb2.GetRoomRunRequest, context: Context
    ) -> room_pb2.RoomRun:
        return run_to_proto(
            await self._service.get_run(current_tenant(), request.room_id, request.id)
        )

    async def CancelRoomRun(
        self, request: room_pb2.CancelRoomRunRequest, context: Context
    ) -> room_pb2.RoomRun:
        run = await self._service.cancel_run(current_tenant(), request.room_id, request.id)
        return run_to_proto(run)
