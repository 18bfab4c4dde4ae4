"""A migrated database per test: SQLite in a temp dir, or the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, text

from aster.server.storage import migrate
from aster.server.storage.database import Database


async def _reset_postgres(url: str) -> None:
    """Drops every table of the test database, Alembic's included."""
    database = Database(url)
    async with database.engine.begin() as conn:
        metadata = MetaData()
        await conn.run_sync(metadata.reflect)
        for table in metadata.tables:
            await conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    await database.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A freshly migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'aster.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        await _reset_postgres(url)
    database = Database(url)
    await migrate.upgrade(database)
    yield database
    await database.close()
    if request.param == "postgresql":
        await _reset_postgres(url)
