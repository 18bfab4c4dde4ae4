"""The rules of sessions: CRUD, history, checkpoints, resume and fork."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.display_text import MAX_DISPLAY_NAME
from aster.server.errors import InvalidArgument
from aster.server.etags import check_etag
from aster.server.ids import check_id, new_id
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.sessions.models import Checkpoint, Message, Session, SessionSpec, SessionStats
from aster.server.storage.session_repository import SessionRepository
from aster.server.update_mask import apply_update_mask

ID_PREFIX = "ses"
UPDATABLE_PATHS = frozenset({"display_name", "labels", "metadata"})


def _validate(spec: SessionSpec) -> None:
    if len(spec.display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"session.display_name: must be at most {MAX_DISPLAY_NAME} characters",
            field="session.display_name",
        )


class SessionService:
    """Sessions of every tenant; each call names the caller's tenant."""

    def __init__(self, repository: SessionRepository, agents: AgentService) -> None:
        self.repository = repository
        self._agents = agents

    async def create(self, tenant: str, spec: SessionSpec, proposed_id: str = "") -> Session:
        """A new session with an existing agent."""
        session_id = check_id(proposed_id, "session_id") if proposed_id else new_id(ID_PREFIX)
        check_id(spec.agent_id, "session.agent_id")
        await self._agents.get(tenant, spec.agent_id)
        _validate(spec)
        now = utcnow()
        return await self.repository.create(
            tenant, Session(id=session_id, spec=spec, create_time=now, update_time=now)
        )

    async def get(self, tenant: str, session_id: str, field: str = "id") -> Session:
        """One session, or NOT_FOUND."""
        return await self.repository.get(tenant, check_id(session_id, field))

    async def list(self, tenant: str, size: int, token: str, agent_id: str) -> Page[Session]:
        """One page of sessions, oldest first, optionally of one agent."""
        limit = page_size(size)
        query = f"agent_id={agent_id}"
        after = decode_token(token, query)
        sessions, more = await self.repository.list_page(tenant, agent_id, after, limit)
        return next_page(sessions, more, query, by_create_time)

    async def update(
        self, tenant: str, session_id: str, patch: SessionSpec, paths: Sequence[str], etag: str
    ) -> Session:
        """Applies the masked fields; ABORTED if `etag` is stale."""
        current = await self.get(tenant, session_id, "session.id")
        check_etag(etag, current.id, current.revision)
        spec = apply_update_mask(current.spec, patch, paths, UPDATABLE_PATHS)
        spec.agent_id = current.spec.agent_id
        _validate(spec)
        updated = dataclasses.replace(current, spec=spec, update_time=utcnow())
        return await self.repository.replace(tenant, updated, current.revision)

    async def delete(self, tenant: str, session_id: str, etag: str) -> None:
        """Deletes the session, its messages, checkpoints, runs and events."""
        current = await self.get(tenant, session_id)
        check_etag(etag, current.id, current.revision)
        await self.repository.delete(tenant, session_id, current.revision if etag else None)

    async def messages(
        self, tenant: str, session_id: str, size: int, token: str, newest_first: bool
    ) -> Page[Message]:
        """One page of the session's messages."""
        await self.get(tenant, session_id, "session_id")
        limit = page_size(size)
        query = f"session={session_id};newest={newest_first}"
        after = decode_token(token, query)
        position = after.number() if after else None
        found = await self.repository.messages(
            tenant, session_id, newest_first=newest_first, after_position=position, limit=limit + 1
        )
        return next_page(found[:limit], len(found) > limit, query, lambda m: str(m.position))

    async def checkpoints(
        self, tenant: str, session_id: str, size: int, token: str
    ) -> Page[Checkpoint]:
        """One page of the session's checkpoints, oldest first."""
        await self.get(tenant, session_id, "session_id")
        limit = page_size(size)
        query = f"session={session_id}"
        after = decode_token(token, query)
        found = await self.repository.checkpoints(
            tenant, session_id, after.number() if after else 0, limit + 1
        )
        return next_page(found[:limit], len(found) > limit, query, lambda c: str(c.turn))

    async def resume(
        self, tenant: str, session_id: str, checkpoint_id: str
    ) -> tuple[Session, Checkpoint]:
        """Rolls the session back to a checkpoint (the latest by default):
        later messages no longer count as history. Runs must be idle."""
        session = await self.get(tenant, session_id, "session_id")
        checkpoint = await self.repository.checkpoint(tenant, session_id, checkpoint_id)
        await self.repository.rewind(tenant, session_id, checkpoint.last_position)
        return session, checkpoint

    async def fork(
        self, tenant: str, session_id: str, checkpoint_id: str, new_session_id: str
    ) -> Session:
        """A new session holding the history up to a checkpoint (the latest
        by default), linked to its parent."""
        parent = await self.get(tenant, session_id, "session_id")
        checkpoint = await self.repository.checkpoint(tenant, session_id, checkpoint_id)
        child_id = (
            check_id(new_session_id, "new_session_id") if new_session_id else new_id(ID_PREFIX)
        )
        now = utcnow()
        spec = dataclasses.replace(
            parent.spec, display_name=parent.spec.display_name, labels=dict(parent.spec.labels)
        )
        child = Session(
            id=child_id,
            spec=spec,
            create_time=now,
            update_time=now,
            parent_session_id=parent.id,
            parent_checkpoint_id=checkpoint.id,
        )
        ids = [new_id("msg") for _ in range(checkpoint.last_position)]
        return await self.repository.fork(tenant, child, parent.id, checkpoint.last_position, ids)

    async def stats(self, tenant: str, session_id: str) -> SessionStats:
        """Counts, tokens and last activity of the session."""
        return await self.repository.stats(tenant, check_id(session_id, "session_id"))

    async def count(self, tenant: str) -> int:
        """How many sessions the tenant has."""
        return await self.repository.count(tenant)
