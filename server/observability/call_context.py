"""What the access log needs to know about the call being served."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass

_call: ContextVar[CallInfo | None] = ContextVar("aster_call", default=None)
MAX_REQUEST_ID = 128


@dataclass
class CallInfo:
    """Filled in as the call passes the interceptors."""

    request_id: str
    tenant: str = ""
    # The API key id or JWT subject; never a secret.
    subject: str = ""
    auth_method: str = ""


def request_id_from(metadata: Mapping[str, str]) -> str:
    """The edge's `x-request-id`, or a fresh one."""
    given = metadata.get("x-request-id", "")
    if given and len(given) <= MAX_REQUEST_ID and given.isprintable():
        return given
    return uuid.uuid4().hex


def begin(info: CallInfo) -> Token[CallInfo | None]:
    """Makes `info` the current call's."""
    return _call.set(info)


def end(token: Token[CallInfo | None]) -> None:
    """Forgets the current call (also when a stream is closed from another
    task's context)."""
    try:
        _call.reset(token)
    except ValueError:
        _call.set(None)


def current_call() -> CallInfo | None:
    """The call being served, if any."""
    return _call.get()
