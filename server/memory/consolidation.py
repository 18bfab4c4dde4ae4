"""ConsolidateMemory: promotes a scope's working-memory entries to semantic
memories, then merges the scope's near-duplicates into one memory each,
summarised by the scope agent's model, and marks the sources superseded.

The scope's agent is the first of: the scope's `agent_id`; the agent of its
session; its room's leader (the first agent member with the role leader),
else the room's first agent member. The tenant's shared scope has no agent:
its merges are extractive."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import structlog

from aster.server.agents.models import Agent
from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import EtagMismatch, NotFound
from aster.server.ids import new_id
from aster.server.memory.semantic_models import (
    ConsolidationReport,
    Memory,
    MemorySource,
    NewMemory,
    Scope,
)
from aster.server.memory.semantic_service import ID_PREFIX, SemanticMemoryService
from aster.server.memory.semantic_validation import MAX_TEXT, check_threshold
from aster.server.providers.base import ChatMessage, ModelRequest, TextDelta
from aster.server.providers.registry import ProviderRegistry
from aster.server.rooms.models import RoomRole

_log = structlog.get_logger("aster.memory")

DEFAULT_THRESHOLD = 0.9
# Rows of the similarity matrix computed at a time.
BLOCK = 1024
# Rounds of merging per consolidation (a round merges what the last created).
MAX_ROUNDS = 5
# Working-memory entries promoted per consolidation.
MAX_PROMOTED = 1000
MERGE_INSTRUCTIONS = (
    "You consolidate an agent's memories. The user message lists memories that say "
    "nearly the same thing, one per line. Reply with one memory, a single short "
    "statement that keeps every fact they hold, and nothing else."
)


class WorkingEntries(Protocol):
    """Reads a scope's working-memory entries (WorkingMemoryService)."""

    async def list(self, tenant: str, scope: Scope, prefix: str, size: int, token: str) -> Any:
        """One page (`items`, `next_page_token`) of the scope's entries."""


class SessionLookup(Protocol):
    """Reads a session (SessionRepository): its `spec.agent_id`."""

    async def get(self, tenant: str, session_id: str) -> Any:
        """The session, or NOT_FOUND."""


class RoomLookup(Protocol):
    """Reads a room with its members (RoomRepository)."""

    async def get(self, tenant: str, room_id: str) -> Any:
        """The room (`spec.members`), or NOT_FOUND."""


class Summarizer:
    """Writes the merged text of near-duplicate memories with the scope
    agent's model (see the module doc for which agent that is). Without an
    agent (the tenant's shared scope, a room without agents, an agent
    deleted since), or for a `scripted` agent without a `script`, the merge
    is extractive and deterministic: the longest text (the earliest of
    equally long ones)."""

    def __init__(
        self,
        agents: AgentService | None,
        providers: ProviderRegistry | None,
        sessions: SessionLookup | None = None,
        rooms: RoomLookup | None = None,
    ) -> None:
        self._agents = agents
        self._providers = providers
        self._sessions = sessions
        self._rooms = rooms

    async def scope_agent_id(self, tenant: str, scope: Scope) -> str:
        """The id of the agent whose model summarises `scope`; empty for none."""
        if scope.agent_id:
            return scope.agent_id
        if scope.session_id and self._sessions is not None:
            session = await self._sessions.get(tenant, scope.session_id)
            return str(session.spec.agent_id)
        if scope.room_id and self._rooms is not None:
            room = await self._rooms.get(tenant, scope.room_id)
            agents = [m for m in room.spec.members if m.who.is_agent]
            leader = next((m for m in agents if m.role is RoomRole.LEADER), None)
            chosen = leader or (agents[0] if agents else None)
            return str(chosen.who.agent_id) if chosen is not None else ""
        return ""

    async def merge(self, tenant: str, scope: Scope, texts: Sequence[str]) -> str:
        """One text for `texts` (oldest first)."""
        agent = None
        if self._agents is not None and self._providers is not None:
            agent_id = await self.scope_agent_id(tenant, scope)
            if agent_id:
                try:
                    agent = await self._agents.get(tenant, agent_id)
                except NotFound:
                    # The session's or room's agent was deleted; the scope
                    # itself still exists.
                    agent = None
        if agent is None or _scripted_without_script(agent):
            return extractive_merge(texts)
        assert self._providers is not None
        model = agent.spec.model
        request = ModelRequest(
            config=model,
            messages=(
                ChatMessage(role="system", content=MERGE_INSTRUCTIONS),
                ChatMessage(role="user", content="\n".join(t.replace("\n", " ") for t in texts)),
            ),
        )
        parts = []
        async for delta in self._providers.provider(model).stream(request):
            if isinstance(delta, TextDelta):
                parts.append(delta.text)
        merged = "".join(parts).strip()[:MAX_TEXT]
        return merged or extractive_merge(texts)


def _scripted_without_script(agent: Agent) -> bool:
    model = agent.spec.model
    return model.provider == "scripted" and not model.params.get("script")


def extractive_merge(texts: Sequence[str]) -> str:
    """The longest of `texts`, the earliest among equally long ones."""
    return max(enumerate(texts), key=lambda item: (len(item[1]), -item[0]))[1]


def clusters(vectors: np.ndarray[Any, Any], threshold: float) -> list[list[int]]:
    """Groups of row indexes joined by a similarity at or above `threshold`
    (connected components), each sorted, groups in order of their first
    index; singletons are left out."""
    count = vectors.shape[0]
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, count, BLOCK):
        block = vectors[start : start + BLOCK] @ vectors.T
        rows, cols = np.nonzero(block >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            a, b = root(start + r), root(c)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def working_text(key: str, value: Any) -> str:
    """The text a promoted working-memory entry becomes."""
    rendered = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"{key}: {rendered}"


class Consolidator:
    """Consolidates one scope at a time. Running it twice in a row changes
    nothing the second time: promoted entries are not promoted again, and
    merging repeats until no current memories are near-duplicates (up to
    MAX_ROUNDS rounds)."""

    def __init__(
        self,
        memories: SemanticMemoryService,
        summarizer: Summarizer,
        working: WorkingEntries | None = None,
        default_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self._memories = memories
        self._summarizer = summarizer
        self._working = working
        self._default_threshold = default_threshold

    async def consolidate(
        self, tenant: str, scope: Scope, threshold: float = 0.0, promote_working: bool = False
    ) -> ConsolidationReport:
        """Promotes (if asked), then merges; returns what changed."""
        threshold = check_threshold(threshold, self._default_threshold)
        embedder = self._memories.embedder
        scope = await self._memories.check_scope(tenant, scope)
        created: list[str] = []
        if promote_working:
            created += await self._promote(tenant, scope)
        merged: list[str] = []
        # A merged text can itself be a near-duplicate of another memory (a
        # model's summary is not one of its sources): merge again until
        # nothing is, so that the next consolidation has nothing to do.
        for _ in range(MAX_ROUNDS):
            current = await self._memories.repository.current_in_scope(
                tenant, scope, embedder.name, embedder.version
            )
            if len(current) < 2:
                break
            groups = clusters(np.vstack([vector for _, vector in current]), threshold)
            if not groups:
                break
            for group in groups:
                sources = [current[i][0] for i in group]
                memory = await self._merge(tenant, scope, sources)
                if memory is not None:
                    created.append(memory.id)
                    merged += [s.id for s in sources]
        return ConsolidationReport(
            merged_ids=tuple(merged), created_ids=tuple(created), superseded_ids=tuple(merged)
        )

    async def _merge(self, tenant: str, scope: Scope, sources: list[Memory]) -> Memory | None:
        embedder = self._memories.embedder
        text = await self._summarizer.merge(tenant, scope, [s.text for s in sources])
        metadata: dict[str, Any] = {}
        for source in sources:
            metadata.update(source.metadata)
        memory = Memory(
            id=new_id(ID_PREFIX),
            text=text,
            metadata=metadata,
            scope=scope,
            source=MemorySource(),
            embedder=embedder.name,
            embedder_version=embedder.version,
            create_time=utcnow(),
            consolidated_from=tuple(s.id for s in sources),
        )
        vector = (await embedder.embed([text]))[0]
        try:
            return await self._memories.repository.merge(
                tenant, memory, vector, [s.id for s in sources]
            )
        except EtagMismatch:
            _log.info("consolidation lost a race; skipped a merge", memory_ids=memory.id)
            return None

    async def _promote(self, tenant: str, scope: Scope) -> list[str]:
        if self._working is None:
            return []
        entries: list[Any] = []
        token = ""
        while len(entries) < MAX_PROMOTED:
            page = await self._working.list(tenant, scope, "", 1000, token)
            entries += page.items
            token = page.next_page_token
            if not token:
                break
        texts = {e.id: working_text(e.key, e.value)[:MAX_TEXT] for e in entries[:MAX_PROMOTED]}
        done = await self._memories.repository.promoted_texts(tenant, list(texts))
        fresh = [e for e in entries[:MAX_PROMOTED] if (e.id, texts[e.id]) not in done]
        if not fresh:
            return []
        added = await self._memories.add_many(
            tenant,
            [
                NewMemory(
                    text=texts[e.id],
                    metadata={"working_memory_key": e.key},
                    scope=scope,
                    source=MemorySource(working_memory_entry_id=e.id),
                )
                for e in fresh
            ],
        )
        return [m.id for m in added]
