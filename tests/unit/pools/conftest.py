"""The migrated `database` fixture (SQLite and PostgreSQL) of the storage tests."""

from __future__ import annotations

from tests.unit.storage.conftest import database

__all__ = ["database"]
