"""API keys: creation (the secret is shown once), listing, revocation, and
verifying a presented key."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from aster.server.auth.models import ApiKey, CredentialsRejected, Principal
from aster.server.auth.secrets import hash_secret, new_key, parse_key, secret_matches
from aster.server.clock import utcnow
from aster.server.errors import InvalidArgument
from aster.server.ids import check_id, new_id
from aster.server.pagination import Page, by_create_time, decode_token, next_page, page_size
from aster.server.storage.api_key_repository import ApiKeyRepository

# A verified key is trusted for this long without another database read; a
# revocation therefore takes effect within this time on every replica.
CACHE_S = 5.0
# `last_use_time` is written at most this often per key.
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class _Cached:
    principal: Principal
    until: float
    expire_time: datetime | None


class ApiKeyService:
    """Manages API keys and checks the ones callers present."""

    def __init__(self, repository: ApiKeyRepository, known_scopes: Collection[str]) -> None:
        self._repository = repository
        self._known_scopes = frozenset(known_scopes)
        self._cache: dict[str, _Cached] = {}
        self._touched: dict[str, datetime] = {}

    async def create(
        self,
        tenant: str,
        scopes: Collection[str],
        display_name: str = "",
        expire_time: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (returned only here)."""
        check_id(tenant, "api_key.tenant")
        unknown = sorted(set(scopes) - self._known_scopes)
        if unknown:
            raise InvalidArgument(
                f"api_key.scopes: unknown scope(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(self._known_scopes))}",
                field="api_key.scopes",
            )
        if not scopes:
            raise InvalidArgument("api_key.scopes: give at least one scope", field="api_key.scopes")
        if len(display_name) > 200:
            raise InvalidArgument(
                "api_key.display_name: at most 200 characters", field="api_key.display_name"
            )
        now = utcnow()
        if expire_time is not None and expire_time <= now:
            raise InvalidArgument(
                "api_key.expire_time: must be in the future", field="api_key.expire_time"
            )
        secret = new_key()
        key = ApiKey(
            id=new_id("key"),
            tenant=tenant,
            display_name=display_name,
            scopes=sorted(set(scopes)),
            prefix=secret.prefix,
            create_time=now,
            expire_time=expire_time,
            secret_hash=hash_secret(secret.secret),
        )
        return await self._repository.create(key), secret.text

    async def get(self, key_id: str) -> ApiKey:
        """One key, or NOT_FOUND."""
        return await self._repository.get(check_id(key_id, "id"))

    async def list(self, tenant: str, show_revoked: bool, size: int, token: str) -> Page[ApiKey]:
        """One page of keys, oldest first."""
        limit = page_size(size)
        query = f"tenant={tenant};revoked={show_revoked}"
        after = decode_token(token, query)
        keys, more = await self._repository.list_page(tenant, show_revoked, after, limit)
        return next_page(keys, more, query, by_create_time)

    async def revoke(self, key_id: str) -> ApiKey:
        """Revokes the key; presenting it fails from now on (within CACHE_S
        on other replicas)."""
        key = await self._repository.revoke(check_id(key_id, "id"), utcnow())
        self._cache = {k: v for k, v in self._cache.items() if v.principal.subject != key.id}
        return key

    async def verify(self, text: str) -> Principal:
        """The principal of a presented key; UNAUTHENTICATED otherwise, with
        one message whatever the reason, so callers learn nothing."""
        now_s = time.monotonic()
        cached = self._cache.get(text)
        if (
            cached is not None
            and cached.until > now_s
            and (cached.expire_time is None or cached.expire_time > utcnow())
        ):
            return cached.principal
        parsed = parse_key(text)
        if parsed is None:
            raise CredentialsRejected("malformed_key")
        key = await self._repository.by_prefix(parsed.prefix)
        # Hash even when the key is unknown, so timing does not tell.
        matches = secret_matches(parsed.secret, key.secret_hash if key else "0" * 64)
        if key is None or not matches:
            raise CredentialsRejected("unknown_key")
        now = utcnow()
        if key.revoked:
            raise CredentialsRejected("revoked_key")
        if key.expire_time is not None and key.expire_time <= now:
            raise CredentialsRejected("expired_key")
        principal = Principal(
            tenant=key.tenant, scopes=frozenset(key.scopes), method="api_key", subject=key.id
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[text] = _Cached(principal, now_s + CACHE_S, key.expire_time)
        last = self._touched.get(key.id)
        if last is None or now - last > TOUCH_EVERY:
            self._touched[key.id] = now
            await self._repository.touch(key.id, now)
        return principal
