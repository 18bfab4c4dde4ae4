"""Room unit tests use the migrated database of each backend."""

from tests.unit.storage.conftest import database

__all__ = ["database"]
