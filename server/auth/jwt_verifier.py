"""JWT verification with PyJWT: pinned algorithms, required exp, checked
nbf/iss/aud with a small leeway, keys from a secret or a JWKS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKSet

from aster.server.auth.models import CredentialsRejected, Principal
from aster.server.ids import ID_PATTERN

JWKS_TIMEOUT_S = 5


@dataclass(frozen=True)
class JwtSettings:
    """How tokens are checked."""

    algorithms: Sequence[str]
    secret: str = ""
    jwks_file: Path | None = None
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""
    leeway_s: float = 30.0
    tenant_claim: str = "tenant"
    scope_claims: Sequence[str] = ("scope", "scp")


class JwtVerifier:
    """Turns a bearer token into a principal, or refuses it."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._jwks: PyJWKSet | None = None
        self._jwks_client: PyJWKClient | None = None
        if settings.jwks_file is not None:
            self._jwks = PyJWKSet.from_json(settings.jwks_file.read_text())
        elif settings.jwks_url:
            self._jwks_client = PyJWKClient(
                settings.jwks_url, cache_keys=True, lifespan=300, timeout=JWKS_TIMEOUT_S
            )

    def _key(self, token: str, algorithm: str) -> Any:
        if algorithm == "HS256":
            return self._settings.secret
        kid = jwt.get_unverified_header(token).get("kid")
        if self._jwks is not None:
            for key in self._jwks.keys:
                if key.key_id == kid:
                    return key.key
            raise CredentialsRejected("unknown_kid")
        if self._jwks_client is not None:
            try:
                return self._jwks_client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError:
                raise CredentialsRejected("unknown_kid") from None
        raise CredentialsRejected("no_key")

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; UNAUTHENTICATED otherwise."""
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise CredentialsRejected("malformed_token") from None
        algorithm = str(header.get("alg", ""))
        if algorithm not in settings.algorithms:
            raise CredentialsRejected("algorithm_not_allowed")
        try:
            claims = jwt.decode(
                token,
                key=self._key(token, algorithm),
                algorithms=[algorithm],
                audience=settings.audience or None,
                issuer=settings.issuer or None,
                leeway=settings.leeway_s,
                options={"require": ["exp"], "verify_aud": bool(settings.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise CredentialsRejected("expired_token") from None
        except jwt.ImmatureSignatureError:
            raise CredentialsRejected("token_not_yet_valid") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError):
            raise CredentialsRejected("wrong_issuer_or_audience") from None
        except jwt.PyJWTError:
            raise CredentialsRejected("invalid_token") from None
        tenant = claims.get(settings.tenant_claim)
        if not isinstance(tenant, str) or not ID_PATTERN.match(tenant):
            raise CredentialsRejected("no_tenant_claim")
        return Principal(
            tenant=tenant,
            scopes=frozenset(_scopes(claims, settings.scope_claims)),
            method="jwt",
            subject=str(claims.get("sub", "")),
        )


def _scopes(claims: dict[str, Any], names: Sequence[str]) -> list[str]:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list):
            return [str(v) for v in value]
    return []
