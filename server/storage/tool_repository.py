"""The only code that reads and writes tools in SQL. Builtin tools are not
stored; `aster.server.tools.service` merges them in."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, NotFound
from aster.server.pagination import Cursor
from aster.server.storage.database import Database
from aster.server.storage.tool_tables import ToolRow
from aster.server.tools.models import (
    HttpToolConfig,
    SecretRef,
    Tool,
    ToolDefinition,
    ToolFilter,
    ToolKind,
)


class ToolRepository:
    """Tools of one database, always scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, tool: Tool) -> Tool:
        """Inserts `tool`; ALREADY_EXISTS if its id is taken in the tenant."""
        row = ToolRow(tenant=tenant, id=tool.id, revision=tool.revision)
        for name, value in _definition_values(tool.definition).items():
            setattr(row, name, value)
        row.create_time, row.update_time = tool.create_time, tool.update_time
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(f"tool {tool.id!r} already exists", field="tool_id") from None
        return tool

    async def get(self, tenant: str, tool_id: str) -> Tool:
        """The tool, or NOT_FOUND."""
        async with self._db.session() as session:
            row = await session.get(ToolRow, (tenant, tool_id))
            if row is None:
                raise not_found(tool_id)
            return _to_tool(row)

    async def get_many(self, tenant: str, tool_ids: Sequence[str]) -> dict[str, Tool]:
        """The tools among `tool_ids` that exist, by id."""
        if not tool_ids:
            return {}
        query = select(ToolRow).where(ToolRow.tenant == tenant, ToolRow.id.in_(set(tool_ids)))
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return {row.id: _to_tool(row) for row in rows}

    async def list(
        self, tenant: str, where: ToolFilter, after: Cursor | None, limit: int
    ) -> tuple[list[Tool], bool]:
        """Up to `limit` tools after `after`, oldest first, and whether more
        follow. `limit` may be 0, to learn only whether any follow."""
        query = select(ToolRow).where(ToolRow.tenant == tenant, *_conditions(where))
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    ToolRow.create_time > created,
                    and_(ToolRow.create_time == created, ToolRow.id > after.last_id),
                )
            )
        query = query.order_by(ToolRow.create_time, ToolRow.id).limit(limit + 1)
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return [_to_tool(r) for r in rows[:limit]], len(rows) > limit

    async def replace(self, tenant: str, tool: Tool, expected_revision: int) -> Tool:
        """Writes `tool` as revision `expected_revision + 1` if the stored
        revision is still `expected_revision`; ABORTED otherwise."""
        statement = (
            update(ToolRow)
            .where(
                ToolRow.tenant == tenant,
                ToolRow.id == tool.id,
                ToolRow.revision == expected_revision,
            )
            .values(
                **_definition_values(tool.definition),
                update_time=tool.update_time,
                revision=expected_revision + 1,
            )
        )
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                if await session.get(ToolRow, (tenant, tool.id)) is None:
                    raise not_found(tool.id)
                raise _changed(tool.id)
        return dataclasses.replace(tool, revision=expected_revision + 1)

    async def delete(self, tenant: str, tool_id: str, expected_revision: int | None) -> None:
        """Deletes the tool; with `expected_revision`, only that revision."""
        statement = delete(ToolRow).where(ToolRow.tenant == tenant, ToolRow.id == tool_id)
        if expected_revision is not None:
            statement = statement.where(ToolRow.revision == expected_revision)
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                if await session.get(ToolRow, (tenant, tool_id)) is None:
                    raise not_found(tool_id)
                raise _changed(tool_id)

    async def count(self, tenant: str) -> int:
        """How many tools the tenant has registered."""
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count()).select_from(ToolRow).where(ToolRow.tenant == tenant)
            )
        return int(total or 0)


def not_found(tool_id: str) -> NotFound:
    """The NOT_FOUND error of a tool."""
    return NotFound(f"tool {tool_id!r} not found", resource="tool", id=tool_id)


def _changed(tool_id: str) -> EtagMismatch:
    return EtagMismatch(
        f"tool {tool_id!r} was changed concurrently; get it again and retry", field="etag"
    )


def _conditions(where: ToolFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.kind is not None:
        conditions.append(ToolRow.kind == where.kind.value)
    for key, value in where.labels_equal:
        conditions.append(ToolRow.labels[key].as_string() == value)
    for key in where.labels_present:
        conditions.append(ToolRow.labels[key].as_string().is_not(None))
    return conditions


def _http_values(config: HttpToolConfig) -> dict[str, Any]:
    return {
        "url": config.url,
        "method": config.method,
        "headers": {
            name: {"env": ref.env} if ref.env else {"file": ref.file}
            for name, ref in config.headers.items()
        },
        "timeout_s": config.timeout.total_seconds() if config.timeout is not None else None,
        "max_response_bytes": config.max_response_bytes,
    }


def _definition_values(definition: ToolDefinition) -> dict[str, Any]:
    return {
        "name": definition.name,
        "description": definition.description,
        "parameters": definition.parameters,
        "kind": definition.kind.value,
        "http": _http_values(definition.http),
        "labels": dict(definition.labels),
        "metadata_": definition.metadata,
    }


def _to_http(values: dict[str, Any]) -> HttpToolConfig:
    timeout_s = values.get("timeout_s")
    return HttpToolConfig(
        url=values.get("url", ""),
        method=values.get("method", ""),
        headers={name: SecretRef(**ref) for name, ref in values.get("headers", {}).items()},
        timeout=timedelta(seconds=timeout_s) if timeout_s is not None else None,
        max_response_bytes=int(values.get("max_response_bytes", 0)),
    )


def _to_tool(row: ToolRow) -> Tool:
    definition = ToolDefinition(
        name=row.name,
        description=row.description,
        parameters=dict(row.parameters),
        kind=ToolKind(row.kind),
        http=_to_http(dict(row.http)),
        labels=dict(row.labels),
        metadata=dict(row.metadata_),
    )
    return Tool(
        id=row.id,
        definition=definition,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        revision=row.revision,
    )
