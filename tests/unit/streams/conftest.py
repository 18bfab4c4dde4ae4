"""The shared migrated-database fixture, on SQLite and PostgreSQL."""

from tests.unit.storage.conftest import database  # noqa: F401
