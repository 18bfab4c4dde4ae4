"""The rules of the agents area: create, read, list, update, delete."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aster.server.agents.filters import parse_agent_filter
from aster.server.agents.models import Agent, AgentSpec
from aster.server.agents.validation import validate_agent_spec
from aster.server.clock import utcnow
from aster.server.etags import check_etag
from aster.server.ids import check_id, new_id
from aster.server.limits.quotas import Quotas
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.storage.agent_repository import AgentRepository
from aster.server.update_mask import apply_update_mask

ID_PREFIX = "agt"
UPDATABLE_PATHS = frozenset(
    {
        "display_name",
        "description",
        "instructions",
        "model",
        "model.provider",
        "model.model",
        "model.temperature",
        "model.max_output_tokens",
        "model.api_key",
        "model.base_url",
        "model.params",
        "tools",
        "labels",
        "metadata",
        "state",
        "memory",
        "memory.auto_recall",
        "memory.recall_top_k",
        "memory.recall_min_score",
    }
)


class AgentService:
    """Agents of every tenant; each call names the caller's tenant."""

    def __init__(self, repository: AgentRepository, quotas: Quotas | None = None) -> None:
        self._repository = repository
        self._quotas = quotas or Quotas()

    async def create(self, tenant: str, spec: AgentSpec, proposed_id: str = "") -> Agent:
        """Validates and stores a new agent."""
        agent_id = check_id(proposed_id, "agent_id") if proposed_id else new_id(ID_PREFIX)
        validate_agent_spec(spec)
        if self._quotas.max_agents:
            self._quotas.check("max_agents", await self._repository.count(tenant), tenant)
        now = utcnow()
        agent = Agent(id=agent_id, spec=spec, create_time=now, update_time=now)
        return await self._repository.create(tenant, agent)

    async def get(self, tenant: str, agent_id: str) -> Agent:
        """One agent, or NOT_FOUND."""
        return await self._repository.get(tenant, check_id(agent_id, "id"))

    async def list(self, tenant: str, size: int, token: str, filter_text: str) -> Page[Agent]:
        """One page of agents matching `filter_text`, oldest first."""
        limit = page_size(size)
        where = parse_agent_filter(filter_text)
        query = f"filter={filter_text.strip()}"
        after = decode_token(token, query)
        agents, more = await self._repository.list_page(tenant, where, after, limit)
        return next_page(agents, more, query, by_create_time)

    async def update(
        self, tenant: str, agent_id: str, patch: AgentSpec, paths: Sequence[str], etag: str
    ) -> Agent:
        """Applies the masked fields of `patch`; ABORTED if `etag` is stale."""
        current = await self.get(tenant, agent_id)
        check_etag(etag, current.id, current.revision)
        spec = apply_update_mask(current.spec, patch, paths, UPDATABLE_PATHS)
        validate_agent_spec(spec)
        updated = dataclasses.replace(current, spec=spec, update_time=utcnow())
        return await self._repository.replace(tenant, updated, current.revision)

    async def delete(self, tenant: str, agent_id: str, etag: str) -> None:
        """Deletes the agent; ABORTED if `etag` is set and stale."""
        check_id(agent_id, "id")
        expected = None
        if etag:
            current = await self._repository.get(tenant, agent_id)
            check_etag(etag, current.id, current.revision)
            expected = current.revision
        await self._repository.delete(tenant, agent_id, expected)

    async def count(self, tenant: str) -> int:
        """How many agents the tenant has."""
        return await self._repository.count(tenant)
