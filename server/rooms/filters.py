"""Parses the `filter` of ListRooms: `labels.<key>=<value>` and
`labels.<key>:*` joined by AND."""

from __future__ import annotations

from aster.server.labels import parse_label_filter
from aster.server.rooms.models import RoomFilter

_NO_ENUM: dict[str, str] = {}


def parse_room_filter(text: str) -> RoomFilter:
    """The filter described by `text`; INVALID_ARGUMENT naming the bad part."""
    parsed = parse_label_filter(text, "labels", _NO_ENUM, "")
    return RoomFilter(labels_equal=parsed.labels_equal, labels_present=parsed.labels_present)
