"""Resource ids: generation and validation, for every resource type."""

from __future__ import annotations

import os
import re
import time

from aster.server.errors import InvalidArgument

ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """A new id such as `agt_01jd8x...`: a ULID (time-ordered, 128 bits) in
    lower-case Crockford base32 behind the type prefix."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def check_id(value: str, field: str) -> str:
    """Returns `value` if it is a well-formed id, else raises InvalidArgument."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value[:80]!r} is malformed: use 1-63 lower-case letters, digits, "
            "'-' or '_', starting with a letter",
            field=field,
        )
    return value
