"""The rules of working-memory keys, values, TTLs and prefixes; errors name
the offending field."""

from __future__ import annotations

import json
import re
from typing import Any

from aster.server.errors import InvalidArgument

MAX_KEY = 256
KEY_CHARACTERS = "ASCII letters, digits and _ - . : / @ # + ="
_KEY = re.compile(r"^[A-Za-z0-9_.:/@#+=-]*$")
DEFAULT_MAX_VALUE_BYTES = 65_536
# About 68 years, the most an int32 holds; the expiry must stay a valid time.
MAX_TTL_SECONDS = 2**31 - 1


def _fail(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field)


def check_key(key: str, field: str) -> str:
    """`key` if it is a well-formed key, else INVALID_ARGUMENT naming `field`."""
    if not key:
        raise _fail(field, "is required")
    return check_prefix(key, field)


def check_prefix(prefix: str, field: str) -> str:
    """`prefix` if it could start a key (empty is fine)."""
    if len(prefix) > MAX_KEY:
        raise _fail(field, f"must be at most {MAX_KEY} characters (got {len(prefix)})")
    if not _KEY.match(prefix):
        raise _fail(field, f"{prefix[:80]!r} has a character other than {KEY_CHARACTERS}")
    return prefix


def check_ttl(ttl_seconds: int, field: str) -> int:
    """`ttl_seconds` if it is 0 (no expiry) or a positive number of seconds."""
    if ttl_seconds < 0:
        raise _fail(field, f"must not be negative (got {ttl_seconds}); 0 means no expiry")
    if ttl_seconds > MAX_TTL_SECONDS:
        raise _fail(field, f"must be at most {MAX_TTL_SECONDS}")
    return ttl_seconds


def check_value(value: Any, field: str, max_bytes: int) -> Any:
    """`value` if it is JSON of at most `max_bytes` bytes (compact, UTF-8)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise _fail(field, "must be a JSON value with finite numbers") from None
    size = len(text.encode())
    if size > max_bytes:
        raise _fail(field, f"is {size} bytes as JSON; the limit is {max_bytes}")
    return value
