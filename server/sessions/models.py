"""Domain types of sessions: the session, its messages and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aster.server.etags import etag_for


@dataclass
class SessionSpec:
    """The fields of a session a caller sets."""

    agent_id: str = ""
    display_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    """A stored session."""

    id: str
    spec: SessionSpec
    create_time: datetime
    update_time: datetime
    parent_session_id: str = ""
    parent_checkpoint_id: str = ""
    revision: int = 1

    @property
    def etag(self) -> str:
        """The etag of this revision."""
        return etag_for(self.id, self.revision)


@dataclass(frozen=True)
class ToolCallRecord:
    """A tool call an assistant message made."""

    id: str
    tool_id: str
    arguments: dict[str, Any]


@dataclass
class Message:
    """One message of a session."""

    id: str
    session_id: str
    role: str  # system, user, assistant, tool
    content: str
    create_time: datetime
    position: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    tool_call_id: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """The state of a session after a completed run."""

    id: str
    session_id: str
    run_id: str
    turn: int
    message_count: int
    last_position: int
    last_message_id: str
    state: dict[str, Any]
    create_time: datetime


@dataclass(frozen=True)
class SessionStats:
    """Counts and usage of a session."""

    session_id: str
    message_count: int
    run_count: int
    input_tokens: int
    output_tokens: int
    last_activity_time: datetime | None
