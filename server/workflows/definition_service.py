"""The rules of workflow definitions: create, read (any version), list,
update (each update is a new version), delete."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from aster.server.clock import utcnow
from aster.server.errors import InvalidArgument, NotFound
from aster.server.etags import check_etag
from aster.server.ids import check_id, new_id
from aster.server.labels import parse_label_filter
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.storage.workflow_repository import WorkflowRepository
from aster.server.update_mask import apply_update_mask
from aster.server.workflows.models import Workflow, WorkflowFilter, WorkflowSpec
from aster.server.workflows.validation import CheckedWorkflow, validate_workflow_spec

ID_PREFIX = "wf"
SCHEDULE_ID_PREFIX = "sch"
UPDATABLE_PATHS = frozenset(
    {"display_name", "description", "steps", "schedules", "labels", "metadata"}
)


class AgentLookup(Protocol):
    """Finds an agent of a tenant (AgentService): NotFound if there is none."""

    async def get(self, tenant: str, agent_id: str) -> Any: ...


class ToolLookup(Protocol):
    """Finds tools of a tenant, builtins included (ToolService):
    InvalidArgument for an unknown id."""

    async def lookup(self, tenant: str, tool_ids: Sequence[str]) -> Any: ...


class WorkflowService:
    """Workflow definitions of every tenant; each call names the caller's
    tenant. The executions side reads definitions through `get` (the current
    version) and `get_version` (the version an execution is pinned to)."""

    def __init__(
        self, repository: WorkflowRepository, agents: AgentLookup, tools: ToolLookup
    ) -> None:
        self._repository = repository
        self._agents = agents
        self._tools = tools

    async def create(self, tenant: str, spec: WorkflowSpec, proposed_id: str = "") -> Workflow:
        """Validates and stores a new workflow at version 1."""
        workflow_id = check_id(proposed_id, "workflow_id") if proposed_id else new_id(ID_PREFIX)
        spec = _with_schedule_ids(spec)
        await self._validate(tenant, spec)
        now = utcnow()
        workflow = Workflow(id=workflow_id, spec=spec, version=1, create_time=now, update_time=now)
        return await self._repository.create(tenant, workflow)

    async def get(self, tenant: str, workflow_id: str) -> Workflow:
        """The workflow at its current version, or NOT_FOUND."""
        return await self._repository.get(tenant, check_id(workflow_id, "id"))

    async def get_version(self, tenant: str, workflow_id: str, version: int) -> Workflow:
        """One version of the workflow, or NOT_FOUND. A deleted workflow's
        versions stay readable, so its executions can finish."""
        if version < 1:
            raise NotFound(f"workflow {workflow_id!r} has no version {version}")
        return await self._repository.get_version(
            tenant, check_id(workflow_id, "workflow_id"), version
        )

    async def list(self, tenant: str, size: int, token: str, filter_text: str) -> Page[Workflow]:
        """One page of workflows matching `filter_text`, oldest first."""
        limit = page_size(size)
        parsed = parse_label_filter(filter_text, "labels", dict[str, str](), "")
        where = WorkflowFilter(parsed.labels_equal, parsed.labels_present)
        query = f"filter={filter_text.strip()}"
        after = decode_token(token, query)
        workflows, more = await self._repository.list_page(tenant, where, after, limit)
        return next_page(workflows, more, query, by_create_time)

    async def update(
        self, tenant: str, workflow_id: str, patch: WorkflowSpec, paths: Sequence[str], etag: str
    ) -> Workflow:
        """Applies the masked fields of `patch` as a new version; ABORTED if
        `etag` is stale or someone else made a version meanwhile."""
        current = await self.get(tenant, workflow_id)
        check_etag(etag, current.id, current.version)
        spec = _with_schedule_ids(apply_update_mask(current.spec, patch, paths, UPDATABLE_PATHS))
        await self._validate(tenant, spec)
        updated = dataclasses.replace(
            current, spec=spec, version=current.version + 1, update_time=utcnow()
        )
        return await self._repository.add_version(tenant, updated)

    async def delete(self, tenant: str, workflow_id: str, etag: str) -> None:
        """Deletes the workflow and stops its schedules; ABORTED if `etag` is
        set and stale. Executions already started go on (on their pinned
        version); new ones cannot start."""
        check_id(workflow_id, "id")
        expected = None
        if etag:
            current = await self._repository.get(tenant, workflow_id)
            check_etag(etag, current.id, current.version)
            expected = current.version
        await self._repository.delete(tenant, workflow_id, expected, utcnow())

    async def count(self, tenant: str) -> int:
        """How many workflows the tenant has."""
        return await self._repository.count(tenant)

    async def _validate(self, tenant: str, spec: WorkflowSpec) -> CheckedWorkflow:
        """The static checks, then: does every agent and tool exist in the
        tenant (builtin tools count)?"""
        checked = validate_workflow_spec(spec)
        for reference in checked.agents:
            try:
                await self._agents.get(tenant, reference.id)
            except NotFound:
                raise InvalidArgument(
                    f"{reference.field} (step {reference.step!r}): unknown agent {reference.id!r}",
                    field=reference.field,
                    step=reference.step,
                ) from None
        for reference in checked.tools:
            try:
                await self._tools.lookup(tenant, [reference.id])
            except InvalidArgument:
                raise InvalidArgument(
                    f"{reference.field} (step {reference.step!r}): unknown tool {reference.id!r}",
                    field=reference.field,
                    step=reference.step,
                ) from None
        return checked


def _with_schedule_ids(spec: WorkflowSpec) -> WorkflowSpec:
    """`spec` with a new id on every schedule that has none."""
    if all(s.id for s in spec.schedules):
        return spec
    schedules = [
        s if s.id else dataclasses.replace(s, id=new_id(SCHEDULE_ID_PREFIX)) for s in spec.schedules
    ]
    return dataclasses.replace(spec, schedules=schedules)
