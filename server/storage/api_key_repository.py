"""The only code that reads and writes API keys in SQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select, update

from aster.server.auth.models import ApiKey
from aster.server.clock import as_utc
from aster.server.errors import NotFound
from aster.server.pagination import Cursor
from aster.server.storage.auth_tables import ApiKeyRow
from aster.server.storage.database import Database


class ApiKeyRepository:
    """API keys of every tenant (managed by admins)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, key: ApiKey) -> ApiKey:
        """Stores a new key."""
        async with self._db.session() as db:
            db.add(
                ApiKeyRow(
                    id=key.id,
                    tenant=key.tenant,
                    display_name=key.display_name,
                    scopes=list(key.scopes),
                    prefix=key.prefix,
                    secret_hash=key.secret_hash,
                    create_time=key.create_time,
                    expire_time=key.expire_time,
                )
            )
        return key

    async def get(self, key_id: str) -> ApiKey:
        """The key, or NOT_FOUND."""
        async with self._db.session() as db:
            row = await db.get(ApiKeyRow, key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} not found", resource="api_key", id=key_id)
        return _to_key(row)

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        """The key with this prefix, if any."""
        async with self._db.session() as db:
            row = await db.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
        return None if row is None else _to_key(row)

    async def list_page(
        self, tenant: str, show_revoked: bool, after: Cursor | None, limit: int
    ) -> tuple[list[ApiKey], bool]:
        """Keys, oldest first, of one tenant or all ("")."""
        query = select(ApiKeyRow)
        if tenant:
            query = query.where(ApiKeyRow.tenant == tenant)
        if not show_revoked:
            query = query.where(ApiKeyRow.revoke_time.is_(None))
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    ApiKeyRow.create_time > created,
                    and_(ApiKeyRow.create_time == created, ApiKeyRow.id > after.last_id),
                )
            )
        query = query.order_by(ApiKeyRow.create_time, ApiKeyRow.id).limit(limit + 1)
        async with self._db.session() as db:
            rows = (await db.scalars(query)).all()
        return [_to_key(r) for r in rows[:limit]], len(rows) > limit

    async def revoke(self, key_id: str, when: datetime) -> ApiKey:
        """Marks the key revoked (once)."""
        async with self._db.session() as db:
            await db.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoke_time.is_(None))
                .values(revoke_time=when)
            )
        return await self.get(key_id)

    async def touch(self, key_id: str, when: datetime) -> None:
        """Records a use of the key."""
        async with self._db.session() as db:
            await db.execute(
                update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_use_time=when)
            )


def _to_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant=row.tenant,
        display_name=row.display_name,
        scopes=list(row.scopes),
        prefix=row.prefix,
        create_time=as_utc(row.create_time),
        expire_time=as_utc(row.expire_time) if row.expire_time else None,
        revoke_time=as_utc(row.revoke_time) if row.revoke_time else None,
        last_use_time=as_utc(row.last_use_time) if row.last_use_time else None,
        secret_hash=row.secret_hash,
    )
