"""Domain types of working memory: JSON values under keys, in a scope."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aster.server.etags import etag_for


@dataclass(frozen=True)
class Scope:
    """Where an entry lives: the combination of the ids that are set; no id
    at all is the tenant's shared scope."""

    agent_id: str = ""
    session_id: str = ""
    room_id: str = ""

    def describe(self) -> str:
        """The scope in words, for messages."""
        parts = [
            f"{name} {value!r}"
            for name, value in (
                ("agent", self.agent_id),
                ("session", self.session_id),
                ("room", self.room_id),
            )
            if value
        ]
        return " and ".join(parts) if parts else "the tenant"


@dataclass(frozen=True)
class Writer:
    """Who wrote an entry last: an agent's tool call in a run, or an API caller."""

    agent_id: str = ""
    session_id: str = ""
    run_id: str = ""
    tool_call_id: str = ""
    principal: str = ""


@dataclass
class EntryValue:
    """The caller-settable part of an entry: its value and lifetime."""

    value: Any = None
    ttl_seconds: int = 0


@dataclass
class WorkingMemoryEntry:
    """A stored working-memory entry."""

    id: str
    scope: Scope
    key: str
    value: Any
    ttl_seconds: int
    expire_time: datetime | None
    create_time: datetime
    update_time: datetime
    writer: Writer = field(default_factory=Writer)
    revision: int = 1

    @property
    def etag(self) -> str:
        """The etag of this revision."""
        return etag_for(self.id, self.revision)

    def expired(self, now: datetime) -> bool:
        """True once the entry's time is up."""
        return self.expire_time is not None and self.expire_time <= now
