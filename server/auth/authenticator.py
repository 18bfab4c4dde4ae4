"""Finds and checks the caller's credentials in the request metadata."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aster.server.auth.api_key_service import ApiKeyService
from aster.server.auth.jwt_verifier import JwtVerifier
from aster.server.auth.models import ADMIN_SCOPE, CredentialsRejected, Principal
from aster.server.auth.secrets import KEY_PREFIX
from aster.server.tenancy import DEFAULT_TENANT

# With auth off, every caller is this principal.
ANONYMOUS = Principal(tenant=DEFAULT_TENANT, scopes=frozenset({ADMIN_SCOPE}), method="none")


class Authenticator:
    """API keys (`x-api-key`, or `authorization: Bearer ak_...`) and JWTs
    (`authorization: Bearer <jwt>`), as enabled."""

    def __init__(self, keys: ApiKeyService | None, tokens: JwtVerifier | None) -> None:
        self._keys = keys
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        """False when auth is off (ASTER_AUTH_MODE=none)."""
        return self._keys is not None or self._tokens is not None

    async def authenticate(self, metadata: Mapping[str, str]) -> Principal:
        """The caller; CredentialsRejected if the credentials do not hold."""
        if not self.enabled:
            return ANONYMOUS
        api_key = metadata.get("x-api-key", "")
        bearer = ""
        authorization = metadata.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            bearer = authorization[7:].strip()
        elif authorization:
            raise CredentialsRejected("unsupported_authorization_scheme")
        if bearer.startswith(KEY_PREFIX):
            api_key, bearer = bearer, ""
        if api_key:
            if self._keys is None:
                raise CredentialsRejected("api_keys_disabled")
            return await self._keys.verify(api_key)
        if bearer:
            if self._tokens is None:
                raise CredentialsRejected("jwt_disabled")
            # A JWKS URL may be fetched (blocking): keep it off the event loop.
            return await asyncio.to_thread(self._tokens.verify, bearer)
        raise CredentialsRejected("missing_credentials")
