"""The event of a durable stream (a room's or a workflow execution's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class StreamEvent:
    """One event of a stream: its position `seq` (1, 2, ... with no gap), its
    kind and its JSON data."""

    tenant: str
    stream: str
    seq: int
    kind: str
    data: dict[str, Any]
    create_time: datetime | None = None
