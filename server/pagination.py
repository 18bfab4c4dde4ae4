"""Page sizes and opaque page tokens (keyset cursors), for every List call."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from aster.server.clock import as_utc
from aster.server.errors import InvalidArgument

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Cursor:
    """The position after the last item of a page: its sort key and id."""

    sort_key: str
    last_id: str

    def time(self) -> datetime:
        """The sort key as a time; INVALID_ARGUMENT if the token was forged."""
        try:
            return as_utc(datetime.fromisoformat(self.sort_key))
        except ValueError:
            raise _malformed() from None

    def number(self) -> int:
        """The sort key as a number; INVALID_ARGUMENT if the token was forged."""
        try:
            return int(self.sort_key)
        except ValueError:
            raise _malformed() from None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a List call and the token of the next ("" on the last)."""

    items: list[T]
    next_page_token: str


def next_page(items: list[T], more: bool, query: str, sort_key: Callable[[T], str]) -> Page[T]:
    """The page of `items`, with a token for what follows if `more`."""
    token = ""
    if more and items:
        last: Any = items[-1]
        token = encode_token(Cursor(sort_key(last), last.id), query)
    return Page(items, token)


def by_create_time(item: Any) -> str:
    """The usual sort key: the item's create_time."""
    return str(item.create_time.isoformat())


def _malformed() -> InvalidArgument:
    return InvalidArgument("page_token is malformed", field="page_token")


def page_size(requested: int) -> int:
    """Applies the default and the cap; negative sizes are an error."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative (got {requested})", field="page_size"
        )
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(query: str) -> str:
    return hashlib.blake2b(query.encode(), digest_size=6).hexdigest()


def encode_token(cursor: Cursor, query: str) -> str:
    """A token for the page after `cursor`, bound to the request's `query`
    (its filter and other parameters) so it cannot be reused with another."""
    raw = json.dumps([cursor.sort_key, cursor.last_id, _fingerprint(query)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: str) -> Cursor | None:
    """The cursor in `token`, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        sort_key, last_id, fingerprint = json.loads(raw)
        if not isinstance(sort_key, str) or not isinstance(last_id, str):
            raise ValueError
    except (ValueError, binascii.Error, TypeError):
        raise _malformed() from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument(
            "page_token was issued for a different filter; start again without it",
            field="page_token",
        )
    return Cursor(sort_key, last_id)
