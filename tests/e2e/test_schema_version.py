"""A replica refuses to start against a schema older or newer than it knows,
and says what to do, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from aster.server.storage import migrate
from aster.server.storage.database import Database
from tests.conftest import fresh_postgres_database
from tests.processes import Ports, stack_env


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'aster.db'}"
    return fresh_postgres_database(request.getfixturevalue("postgres_url"), "schema")


def aster(tmp_path: Path, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aster.server.cli", *args],
        env=stack_env(Ports(), tmp_path, ASTER_DATABASE_URL=url, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def label_schema(url: str, revision: str) -> None:
    """Makes the database claim `revision`, as another build would leave it."""

    async def relabel() -> None:
        database = Database(url)
        try:
            async with database.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE alembic_version SET version_num = :r"), {"r": revision}
                )
        finally:
            await database.close()

    asyncio.run(relabel())


def previous_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_revision(migrate.head_revision())
    assert head is not None and isinstance(head.down_revision, str)
    return head.down_revision


def test_an_older_schema_is_refused_until_it_is_upgraded(tmp_path: Path, database_url: str) -> None:
    assert aster(tmp_path, database_url, "db", "upgrade").returncode == 0
    older = previous_revision()
    label_schema(database_url, older)
    refused = aster(tmp_path, database_url, "serve", ASTER_AUTO_MIGRATE="false")
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert f"schema is at revision {older!r}" in output, output[-2000:]
    assert "run `aster db upgrade`" in output
    assert "Traceback" not in output


def test_a_newer_schema_is_refused_with_or_without_auto_migration(
    tmp_path: Path, database_url: str
) -> None:
    assert aster(tmp_path, database_url, "db", "upgrade").returncode == 0
    label_schema(database_url, "f00dfeedbeef")
    for auto_migrate in ("true", "false"):
        refused = aster(tmp_path, database_url, "serve", ASTER_AUTO_MIGRATE=auto_migrate)
        assert refused.returncode != 0
        output = refused.stdout + refused.stderr
        assert "'f00dfeedbeef', which this Aster build does not know" in output, output[-2000:]
        assert "upgrade Aster" in output
        assert "Traceback" not in output
    # `aster db upgrade` refuses it too, rather than touching it.
    upgrade = aster(tmp_path, database_url, "db", "upgrade")
    assert upgrade.returncode != 0
    assert "does not know" in upgrade.stdout + upgrade.stderr
