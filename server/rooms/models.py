"""Domain types of the rooms area."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aster.server.etags import etag_for
from aster.server.runs.models import MultitaskStrategy, RunStatus


class RoomRole(StrEnum):
    """What a member does in a room."""

    LEADER = "leader"
    WORKER = "worker"
    OBSERVER = "observer"


class RoomStrategy(StrEnum):
    """How the next speaker of a collaboration is chosen."""

    ROUND_ROBIN = "round_robin"
    LEADER = "leader"
    MENTION = "mention"


# The speaker of the task that opens a collaboration: RunRoom names no
# member, so the task is posted as this reserved participant, which no member
# may take as its participant_id.
SYSTEM_PARTICIPANT = "system"


@dataclass(frozen=True)
class Speaker:
    """An agent (`agent_id`) or a human (`participant_id`); exactly one is
    set. The task of a collaboration is posted by `Speaker.system()`."""

    agent_id: str = ""
    participant_id: str = ""

    @property
    def key(self) -> str:
        """The id mentions use: the agent or participant id."""
        return self.agent_id or self.participant_id

    @property
    def is_agent(self) -> bool:
        """True for an agent."""
        return bool(self.agent_id)

    @property
    def is_system(self) -> bool:
        """True for the task of a collaboration (also a message stored
        before the task had a speaker: neither id)."""
        return not self.agent_id and self.participant_id in ("", SYSTEM_PARTICIPANT)

    @classmethod
    def system(cls) -> Speaker:
        """The speaker of the task that opens a collaboration."""
        return cls(participant_id=SYSTEM_PARTICIPANT)


@dataclass(frozen=True)
class Member:
    """One member of a room."""

    who: Speaker
    role: RoomRole = RoomRole.WORKER
    join_time: datetime | None = None


@dataclass
class RoomSpec:
    """The fields of a room a caller sets."""

    display_name: str = ""
    members: list[Member] = field(default_factory=list)
    double_text_policy: MultitaskStrategy = MultitaskStrategy.REJECT
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Room:
    """A stored room (its members are read separately)."""

    id: str
    spec: RoomSpec
    create_time: datetime
    update_time: datetime
    revision: int = 1

    @property
    def etag(self) -> str:
        """The etag of this revision."""
        return etag_for(self.id, self.revision)


@dataclass(frozen=True)
class RoomMessage:
    """One message of a room; `seq` is the seq of its `message` event."""

    room_id: str
    seq: int
    speaker: Speaker
    text: str
    mentions: tuple[str, ...] = ()
    room_run_id: str = ""
    create_time: datetime | None = None

    @property
    def id(self) -> str:
        """The keyset id of history pages (messages sort by seq)."""
        return str(self.seq)


@dataclass
class RoomRun:
    """A collaboration of a room's agents on one task."""

    id: str
    room_id: str
    task: str
    strategy: RoomStrategy
    max_turns: int
    stop_condition: str
    status: RunStatus
    create_time: datetime
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""
    result: str = ""
    owner: str = ""
    end_time: datetime | None = None


@dataclass(frozen=True)
class RoomFilter:
    """A parsed ListRooms filter: every condition must hold."""

    labels_equal: tuple[tuple[str, str], ...] = ()
    labels_present: tuple[str, ...] = ()


# Kinds of the events of a room's stream (`room:<id>`); each names the
# RoomEvent field its data fills (as JSON with proto field names).
MESSAGE = "message"
JOIN = "join"
LEAVE = "leave"
TYPING = "typing"
DELTA = "delta"
TURN_CHANGE = "turn_change"
RUN_UPDATE = "run_update"


def stream_name(room_id: str) -> str:
    """The durable stream of a room's events."""
    return f"room:{room_id}"
