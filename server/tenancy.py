"""The caller's tenant for the current request.

Authentication (a later interceptor) sets it; with auth off every caller is in
the `default` tenant."""

from __future__ import annotations

from contextvars import ContextVar

DEFAULT_TENANT = "default"

_current_tenant: ContextVar[str] = ContextVar("aster_tenant", default=DEFAULT_TENANT)


def current_tenant() -> str:
    """The tenant of the request being served."""
    return _current_tenant.get()
