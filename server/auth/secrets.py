"""API key secrets: generation, parsing and hashing. The database holds only
the hash; comparison is constant-time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "ak_"
_ID_CHARS = 12
_SECRET_BYTES = 32


@dataclass(frozen=True)
class KeySecret:
    """A key as the client sends it: `ak_<lookup>_<secret>`."""

    lookup: str
    secret: str

    @property
    def text(self) -> str:
        """The full key."""
        return f"{KEY_PREFIX}{self.lookup}_{self.secret}"

    @property
    def prefix(self) -> str:
        """The part that identifies the key without revealing it."""
        return f"{KEY_PREFIX}{self.lookup}"


def new_key() -> KeySecret:
    """A fresh random key."""
    return KeySecret(
        lookup=secrets.token_hex(_ID_CHARS // 2), secret=secrets.token_urlsafe(_SECRET_BYTES)
    )


def parse_key(text: str) -> KeySecret | None:
    """The parts of a key, or None if `text` is not shaped like one."""
    if not text.startswith(KEY_PREFIX):
        return None
    lookup, sep, secret = text[len(KEY_PREFIX) :].partition("_")
    if not sep or len(lookup) != _ID_CHARS or not secret or len(secret) > 128:
        return None
    return KeySecret(lookup, secret)


def hash_secret(secret: str) -> str:
    """The stored form of a secret (SHA-256; keys are 256-bit random, so a
    slow hash adds nothing)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time check of a presented secret against the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
