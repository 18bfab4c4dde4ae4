"""The only code that reads and writes agents in SQL."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from aster.server.agents.models import (
    Agent,
    AgentFilter,
    AgentSpec,
    AgentState,
    MemoryConfig,
    ModelConfig,
    SecretRef,
)
from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, NotFound
from aster.server.pagination import Cursor
from aster.server.storage.database import Database
from aster.server.storage.tables import AgentRow


class AgentRepository:
    """Agents of one database, always scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, agent: Agent) -> Agent:
        """Inserts `agent`; ALREADY_EXISTS if its id is taken in the tenant."""
        row = AgentRow(tenant=tenant, id=agent.id, revision=agent.revision)
        _write_spec(row, agent.spec)
        row.create_time, row.update_time = agent.create_time, agent.update_time
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(f"agent {agent.id!r} already exists", field="agent_id") from None
        return agent

    async def get(self, tenant: str, agent_id: str) -> Agent:
        """The agent, or NOT_FOUND."""
        async with self._db.session() as session:
            row = await session.get(AgentRow, (tenant, agent_id))
            if row is None:
                raise _not_found(agent_id)
            return _to_agent(row)

    async def list_page(
        self, tenant: str, where: AgentFilter, after: Cursor | None, limit: int
    ) -> tuple[list[Agent], bool]:
        """Up to `limit` agents after `after`, oldest first, and whether more follow."""
        query = select(AgentRow).where(AgentRow.tenant == tenant, *_conditions(where))
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    AgentRow.create_time > created,
                    and_(AgentRow.create_time == created, AgentRow.id > after.last_id),
                )
            )
        query = query.order_by(AgentRow.create_time, AgentRow.id).limit(limit + 1)
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return [_to_agent(r) for r in rows[:limit]], len(rows) > limit

    async def replace(self, tenant: str, agent: Agent, expected_revision: int) -> Agent:
        """Writes `agent` as revision `expected_revision + 1` if the stored
        revision is still `expected_revision`; ABORTED otherwise."""
        values = _spec_values(agent.spec)
        statement = (
            update(AgentRow)
            .where(
                AgentRow.tenant == tenant,
                AgentRow.id == agent.id,
                AgentRow.revision == expected_revision,
            )
            .values(**values, update_time=agent.update_time, revision=expected_revision + 1)
        )
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                exists = await session.get(AgentRow, (tenant, agent.id))
                if exists is None:
                    raise _not_found(agent.id)
                raise EtagMismatch(
                    f"agent {agent.id!r} was changed concurrently; get it again and retry",
                    field="etag",
                )
        return dataclasses.replace(agent, revision=expected_revision + 1)

    async def delete(self, tenant: str, agent_id: str, expected_revision: int | None) -> None:
        """Deletes the agent; with `expected_revision`, only that revision."""
        statement = delete(AgentRow).where(AgentRow.tenant == tenant, AgentRow.id == agent_id)
        if expected_revision is not None:
            statement = statement.where(AgentRow.revision == expected_revision)
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                if await session.get(AgentRow, (tenant, agent_id)) is None:
                    raise _not_found(agent_id)
                raise EtagMismatch(
                    f"agent {agent_id!r} was changed concurrently; get it again and retry",
                    field="etag",
                )

    async def count(self, tenant: str) -> int:
        """How many agents the tenant has."""
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count()).select_from(AgentRow).where(AgentRow.tenant == tenant)
            )
        return int(total or 0)


def _not_found(agent_id: str) -> NotFound:
    return NotFound(f"agent {agent_id!r} not found", resource="agent", id=agent_id)


def _conditions(where: AgentFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.state is not None:
        conditions.append(AgentRow.state == where.state.value)
    for key, value in where.labels_equal:
        conditions.append(AgentRow.labels[key].as_string() == value)
    for key in where.labels_present:
        conditions.append(AgentRow.labels[key].as_string().is_not(None))
    return conditions


def _spec_values(spec: AgentSpec) -> dict[str, Any]:
    return {
        "display_name": spec.display_name,
        "description": spec.description,
        "instructions": spec.instructions,
        "model": dataclasses.asdict(spec.model),
        "tools": list(spec.tools),
        "labels": dict(spec.labels),
        "metadata_": spec.metadata,
        "state": spec.state.value,
        "memory": dataclasses.asdict(spec.memory),
    }


def _write_spec(row: AgentRow, spec: AgentSpec) -> None:
    for name, value in _spec_values(spec).items():
        setattr(row, name, value)


def _to_agent(row: AgentRow) -> Agent:
    model = dict(row.model)
    api_key = model.pop("api_key", None)
    spec = AgentSpec(
        display_name=row.display_name,
        description=row.description,
        instructions=row.instructions,
        model=ModelConfig(**model, api_key=SecretRef(**api_key) if api_key else None),
        tools=list(row.tools),
        labels=dict(row.labels),
        metadata=dict(row.metadata_),
        state=AgentState(row.state),
        memory=MemoryConfig(**row.memory) if row.memory else MemoryConfig(),
    )
    return Agent(
        id=row.id,
        spec=spec,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        revision=row.revision,
    )
