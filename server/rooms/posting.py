"""Posting to a room: store the message with its event, then publish it."""

from __future__ import annotations

from aster.server.rooms.events import message_data
from aster.server.rooms.models import RoomMessage
from aster.server.storage.room_repository import RoomRepository
from aster.server.streams.log import StreamLog


async def post_message(
    repository: RoomRepository, log: StreamLog, tenant: str, message: RoomMessage
) -> RoomMessage:
    """Stores `message` (it takes the seq of its event) and publishes the event."""
    stored, events = await repository.add_message(tenant, message, message_data(message))
    await log.publish(events)
    return stored
