"""Cached session context: a session's active messages, kept by a live agent
and brought up to date with one cheap query instead of a full read."""

from __future__ import annotations

from dataclasses import dataclass, field

from aster.server.sessions.models import Message
from aster.server.storage.pool_repository import PoolRepository
from aster.server.storage.session_repository import SessionRepository


@dataclass
class SessionContext:
    """The active messages of one session, in order."""

    session_id: str
    messages: list[Message] = field(default_factory=list)

    @property
    def last_position(self) -> int:
        """The position of the last message (0 when empty)."""
        return self.messages[-1].position if self.messages else 0

    def add(self, message: Message) -> None:
        """Appends a message the run just stored (with its position)."""
        self.messages.append(message)


class SessionContextLoader:
    """Loads session contexts and checks cached ones against the database."""

    def __init__(self, sessions: SessionRepository, pool: PoolRepository) -> None:
        self._sessions = sessions
        self._pool = pool

    async def load(self, tenant: str, session_id: str) -> SessionContext:
        """The session's full context, read from the database."""
        return SessionContext(session_id, await self._sessions.messages(tenant, session_id))

    async def refresh(self, tenant: str, context: SessionContext) -> SessionContext:
        """`context` made current: unchanged if the session is (one
        aggregate query), extended by the messages written since (another
        replica's run), or read again if messages were rolled back."""
        count, last = await self._pool.context_version(tenant, context.session_id)
        if count == len(context.messages) and last == context.last_position:
            return context
        if count > len(context.messages):
            newer = await self._sessions.messages(
                tenant, context.session_id, after_position=context.last_position
            )
            if len(context.messages) + len(newer) == count:
                context.messages.extend(newer)
                return context
        return await self.load(tenant, context.session_id)
