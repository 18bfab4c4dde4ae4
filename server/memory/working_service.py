"""The rules of working memory: JSON values under keys in a scope, with an
optional TTL and compare-and-set by etag."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import AlreadyExists, EtagMismatch, InvalidArgument, NotFound
from aster.server.etags import check_etag
from aster.server.ids import check_id, new_id
from aster.server.memory.working_models import EntryValue, Scope, WorkingMemoryEntry, Writer
from aster.server.memory.working_validation import (
    DEFAULT_MAX_VALUE_BYTES,
    check_key,
    check_prefix,
    check_ttl,
    check_value,
)
from aster.server.pagination import Page, decode_token, next_page, page_size
from aster.server.sessions.service import SessionService
from aster.server.storage.working_memory_repository import WorkingMemoryRepository
from aster.server.update_mask import apply_update_mask

ID_PREFIX = "wme"
UPDATABLE_PATHS = frozenset({"value", "ttl_seconds"})
# How often a plain Set re-reads the key after losing a race to another writer.
SET_ATTEMPTS = 5

_log = structlog.get_logger("aster.memory")


class RoomLookup(Protocol):
    """Whatever can say that a room exists in a tenant (NOT_FOUND otherwise)."""

    async def get(self, tenant: str, room_id: str) -> object:
        """The room, or NOT_FOUND."""


class ScopeChecker:
    """Checks that a scope's agent, session and room exist in the tenant,
    and that a session named with an agent is that agent's. Without a room
    lookup any well-formed room id is accepted."""

    def __init__(
        self,
        agents: AgentService | None,
        sessions: SessionService | None,
        rooms: RoomLookup | None = None,
    ) -> None:
        self._agents = agents
        self._sessions = sessions
        self._rooms = rooms

    async def check(self, tenant: str, scope: Scope, prefix: str = "") -> Scope:
        """`scope` if every id in it is well-formed and exists; else
        INVALID_ARGUMENT or NOT_FOUND naming the field."""
        if scope.agent_id:
            check_id(scope.agent_id, f"{prefix}agent_id")
            if self._agents is not None:
                await self._agents.get(tenant, scope.agent_id)
        if scope.session_id:
            check_id(scope.session_id, f"{prefix}session_id")
            if self._sessions is not None:
                session = await self._sessions.get(tenant, scope.session_id)
                owner = session.spec.agent_id
                if scope.agent_id and owner != scope.agent_id:
                    raise InvalidArgument(
                        f"{prefix}session_id: session {scope.session_id!r} belongs to agent "
                        f"{owner!r}, not {scope.agent_id!r}",
                        field=f"{prefix}session_id",
                    )
        if scope.room_id:
            check_id(scope.room_id, f"{prefix}room_id")
            if self._rooms is not None:
                await self._rooms.get(tenant, scope.room_id)
        return scope


class WorkingMemoryService:
    """Working memory of every tenant; each call names the caller's tenant.

    `clock` is the source of the current time (tests pass a controllable
    one); expired entries are invisible from the moment `clock()` passes
    their expiry, and `purge_expired` deletes them."""

    def __init__(
        self,
        repository: WorkingMemoryRepository,
        scopes: ScopeChecker,
        *,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._repository = repository
        self._scopes = scopes
        self._max_value_bytes = max_value_bytes
        self._clock = clock

    async def set(
        self,
        tenant: str,
        scope: Scope,
        key: str,
        value: EntryValue,
        *,
        etag: str = "",
        if_absent: bool = False,
        writer: Writer | None = None,
    ) -> WorkingMemoryEntry:
        """Stores `value` under `key` (an upsert). With `etag`, only over the
        entry of that etag (ABORTED otherwise); with `if_absent`, only if the
        key is absent (ALREADY_EXISTS otherwise)."""
        check_key(key, "entry.key")
        self._check_value(value)
        if etag and if_absent:
            raise InvalidArgument(
                "if_absent cannot be combined with entry.etag: one asks for a new key, the "
                "other for an existing one",
                field="if_absent",
            )
        await self._scopes.check(tenant, scope, "entry.")
        writer = writer or Writer()
        for _ in range(SET_ATTEMPTS):
            now = self._clock()
            current = await self._repository.find(tenant, scope, key, now)
            if current is None:
                if etag:
                    raise EtagMismatch(
                        f"etag {etag!r} does not match: key {key!r} does not exist in the "
                        f"working memory of {scope.describe()}",
                        field="entry.etag",
                    )
                entry = WorkingMemoryEntry(
                    id=new_id(ID_PREFIX),
                    scope=scope,
                    key=key,
                    value=value.value,
                    ttl_seconds=value.ttl_seconds,
                    expire_time=_expiry(now, value.ttl_seconds),
                    create_time=now,
                    update_time=now,
                    writer=writer,
                )
                try:
                    return await self._repository.insert(tenant, entry, now)
                except AlreadyExists:
                    if if_absent:
                        raise
                    continue  # another writer created it meanwhile: replace theirs
            if if_absent:
                raise AlreadyExists(
                    f"key {key!r} already exists in the working memory of {scope.describe()}",
                    field="entry.key",
                )
            check_etag(etag, current.id, current.revision)
            try:
                return await self._write(tenant, current, value, writer, now, bool(etag))
            except NotFound:
                if etag:
                    raise EtagMismatch(
                        f"etag {etag!r} does not match: key {key!r} was deleted meanwhile",
                        field="entry.etag",
                    ) from None
                # Deleted by another caller since we read it: create it again.
        raise EtagMismatch(
            f"key {key!r} changed under every attempt to set it; retry", field="entry.key"
        )

    async def get(self, tenant: str, entry_id: str) -> WorkingMemoryEntry:
        """One unexpired entry, or NOT_FOUND (also once the agent, session or
        room of its scope was deleted: the purge removes it later)."""
        return await self._repository.get(tenant, check_id(entry_id, "id"), self._clock())

    async def find(self, tenant: str, scope: Scope, key: str) -> WorkingMemoryEntry | None:
        """The unexpired entry of `scope` under `key`, if any."""
        check_key(key, "key")
        await self._scopes.check(tenant, scope)
        return await self._repository.find(tenant, scope, key, self._clock())

    async def list(
        self, tenant: str, scope: Scope, prefix: str, size: int, token: str
    ) -> Page[WorkingMemoryEntry]:
        """One page of the unexpired entries of `scope` whose key starts with
        `prefix`, by key."""
        limit = page_size(size)
        check_prefix(prefix, "prefix")
        await self._scopes.check(tenant, scope)
        query = f"scope={scope.agent_id}/{scope.session_id}/{scope.room_id};prefix={prefix}"
        after = decode_token(token, query)
        entries, more = await self._repository.list_page(
            tenant, scope, prefix, after.sort_key if after else None, limit, self._clock()
        )
        return next_page(entries, more, query, lambda entry: entry.key)

    async def update(
        self,
        tenant: str,
        entry_id: str,
        patch: EntryValue,
        paths: Sequence[str],
        etag: str,
        writer: Writer | None = None,
    ) -> WorkingMemoryEntry:
        """Applies the masked fields of `patch` (`value`, `ttl_seconds`);
        ABORTED if `etag` is set and stale. The TTL countdown restarts."""
        current = await self.get(tenant, entry_id)
        check_etag(etag, current.id, current.revision)
        merged = apply_update_mask(
            EntryValue(current.value, current.ttl_seconds),
            patch,
            [_entry_path(p) for p in paths],
            UPDATABLE_PATHS,
        )
        self._check_value(merged)
        return await self._write(
            tenant, current, merged, writer or Writer(), self._clock(), conditional=bool(etag)
        )

    async def delete(self, tenant: str, entry_id: str, etag: str = "") -> None:
        """Deletes the entry; ABORTED if `etag` is set and stale."""
        check_id(entry_id, "id")
        now = self._clock()
        expected = None
        if etag:
            current = await self._repository.get(tenant, entry_id, now)
            check_etag(etag, current.id, current.revision)
            expected = current.revision
        await self._repository.delete(tenant, entry_id, expected, now)

    async def delete_key(self, tenant: str, scope: Scope, key: str) -> bool:
        """Deletes the entry of `scope` under `key`; False if there was none."""
        entry = await self.find(tenant, scope, key)
        if entry is None:
            return False
        try:
            await self._repository.delete(tenant, entry.id, None, self._clock())
        except NotFound:
            return False
        return True

    async def clear(self, tenant: str, scope: Scope) -> int:
        """Deletes every entry of `scope`; returns how many were unexpired."""
        await self._scopes.check(tenant, scope)
        return await self._repository.clear(tenant, scope, self._clock())

    async def purge_expired(self) -> int:
        """Deletes expired entries of every tenant, in batches; returns how many."""
        return await _in_batches(lambda: self._repository.purge_expired(self._clock()))

    async def purge_orphans(self) -> int:
        """Deletes the entries of every tenant whose scope's agent, session or
        room was deleted, in batches; returns how many."""
        return await _in_batches(self._repository.purge_orphans)

    def _check_value(self, value: EntryValue) -> None:
        check_value(value.value, "entry.value", self._max_value_bytes)
        check_ttl(value.ttl_seconds, "entry.ttl_seconds")

    async def _write(
        self,
        tenant: str,
        current: WorkingMemoryEntry,
        value: EntryValue,
        writer: Writer,
        now: datetime,
        conditional: bool,
    ) -> WorkingMemoryEntry:
        """Writes over `current`; if `conditional`, only over its revision
        (ABORTED otherwise), else whatever its revision is now."""
        updated = dataclasses.replace(
            current,
            value=value.value,
            ttl_seconds=value.ttl_seconds,
            expire_time=_expiry(now, value.ttl_seconds),
            update_time=now,
            writer=writer,
        )
        expected = current.revision if conditional else None
        return await self._repository.replace(tenant, updated, expected, now)


async def _in_batches(purge: Callable[[], Awaitable[int]]) -> int:
    """Calls `purge` until it removes nothing; returns the total removed."""
    removed = 0
    while True:
        batch = await purge()
        removed += batch
        if batch == 0:
            return removed


def _entry_path(path: str) -> str:
    # Masks may name fields relative to the request (`entry.value`) or to
    # the entry (`value`).
    return path.removeprefix("entry.")


def _expiry(now: datetime, ttl_seconds: int) -> datetime | None:
    return now + timedelta(seconds=ttl_seconds) if ttl_seconds else None


async def purge_forever(service: WorkingMemoryService, interval_s: float) -> None:
    """Deletes expired working-memory entries, and those of deleted agents,
    sessions and rooms, every `interval_s` seconds."""
    while True:
        try:
            removed = await service.purge_expired()
            if removed:
                _log.info("purged expired working memory", entries=removed)
            orphans = await service.purge_orphans()
            if orphans:
                _log.info("purged working memory of deleted scopes", entries=orphans)
        except Exception as err:
            _log.warning("purging working memory failed", error=str(err))
        await asyncio.sleep(interval_s)
