"""The Alembic migrations build exactly the schema the table classes declare,
on SQLite and PostgreSQL: a table, column, index or type that one has and
the other lacks fails here instead of in production."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

import aster.server.storage as storage
from aster.server.storage.database import Database
from aster.server.storage.tables import Base
from tests.unit.storage.conftest import database  # noqa: F401 - the shared fixture


def _import_every_table_module() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(storage.__path__) if m.name.endswith("tables")]
    for name in names:
        importlib.import_module(f"{storage.__name__}.{name}")
    return names


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": False}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrated_schema_equals_the_declared_tables(
    database: Database,  # noqa: F811
) -> None:
    modules = _import_every_table_module()
    assert "run_tables" in modules and "stream_tables" in modules
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    ignored = {"alembic_version"}
    real = [
        d
        for d in differences
        if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name in ignored)
    ]
    assert real == [], "migrations and table classes disagree:\n" + "\n".join(map(str, real))
