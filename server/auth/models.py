"""Domain types of authentication."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from aster.server.errors import Unauthenticated

ADMIN_SCOPE = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: their tenant, scopes and how they proved it."""

    tenant: str
    scopes: frozenset[str]
    # "api_key" or "jwt"; "none" when auth is off.
    method: str
    # The API key's id, or the JWT's subject (never the secret itself).
    subject: str = ""

    def allows(self, scope: str) -> bool:
        """True if the principal holds `scope` (admin holds every scope)."""
        return scope in self.scopes or ADMIN_SCOPE in self.scopes


@dataclass
class ApiKey:
    """A stored API key: everything but the secret, whose hash is kept."""

    id: str
    tenant: str
    display_name: str
    scopes: list[str]
    prefix: str
    create_time: datetime
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    last_use_time: datetime | None = None
    secret_hash: str = field(default="", repr=False)

    @property
    def revoked(self) -> bool:
        """True once revoked."""
        return self.revoke_time is not None


INVALID_CREDENTIALS = "missing or invalid credentials"


class CredentialsRejected(Unauthenticated):
    """Credentials that do not authenticate. The caller sees one message
    whatever the cause; `cause` is for logs and metrics only."""

    def __init__(self, cause: str) -> None:
        super().__init__(INVALID_CREDENTIALS)
        self.cause = cause
