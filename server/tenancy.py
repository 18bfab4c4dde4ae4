"""Who the current request is for: its principal and tenant.

The auth interceptor sets the principal; with auth off every caller is in the
`default` tenant."""

from __future__ import annotations

from contextvars import ContextVar, Token

from aster.server.auth.models import Principal

DEFAULT_TENANT = "default"

_principal: ContextVar[Principal | None] = ContextVar("aster_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the request being served, if any."""
    return _principal.get()


def current_tenant() -> str:
    """The tenant of the request being served."""
    principal = _principal.get()
    return principal.tenant if principal is not None else DEFAULT_TENANT


def enter(principal: Principal) -> Token[Principal | None]:
    """Makes `principal` the caller until `leave`."""
    return _principal.set(principal)


def leave(token: Token[Principal | None]) -> None:
    """Restores the caller before `enter` (a stream closed from another
    task's context just forgets it)."""
    try:
        _principal.reset(token)
    except ValueError:
        _principal.set(None)
