"""Applies Alembic migrations and checks the schema version at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, make_url
from sqlalchemy.exc import DBAPIError

from aster.server.errors import StartupError
from aster.server.storage.database import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaMismatch(StartupError):
    """The database's schema is one this build of Aster does not know."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this build knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


# Held while migrating, so replicas starting together migrate one at a time.
MIGRATION_LOCK_ID = 727_070_001


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
    _check_known(connection)
    command.upgrade(_config(connection), "head")


async def require_current(db: Database) -> None:
    """Refuses a database whose schema is not this build's head (when
    replicas do not migrate themselves)."""
    current = await current_revision(db)
    if current is not None and current not in known_revisions():
        raise SchemaMismatch(_unknown_message(current))
    if current != head_revision():
        raise SchemaMismatch(
            f"the database schema is at revision {current!r}, this Aster build needs "
            f"{head_revision()!r}: run `aster db upgrade` (ASTER_AUTO_MIGRATE is off)"
        )


def _check_known(connection: Connection) -> None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and current not in known_revisions():
        raise SchemaMismatch(_unknown_message(current))


def known_revisions() -> set[str]:
    """Every revision this build knows."""
    return {rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()}


def _unknown_message(current: str) -> str:
    return (
        f"the database schema is at revision {current!r}, which this Aster build does not "
        f"know (newest known: {head_revision()!r}): a newer Aster migrated it; upgrade Aster, "
        "or point it at another database"
    )


async def upgrade(db: Database) -> None:
    """Brings the schema to this build's head revision."""
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade)
    except (OSError, DBAPIError) as err:
        where = make_url(db.url).render_as_string(hide_password=True)
        raise StartupError(f"cannot reach the database at {where}: {err}") from err


async def current_revision(db: Database) -> str | None:
    """The revision the database is at; None for an empty database."""
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
