"""Etags: opaque strings derived from a resource's id and revision."""

from __future__ import annotations

import hashlib

from aster.server.errors import EtagMismatch


def etag_for(resource_id: str, revision: int) -> str:
    """The etag of revision `revision` of a resource."""
    digest = hashlib.blake2b(f"{resource_id}\x00{revision}".encode(), digest_size=8)
    return digest.hexdigest()


def check_etag(expected: str, resource_id: str, revision: int) -> None:
    """Raises EtagMismatch if `expected` is set and is not the current etag."""
    if expected and expected != etag_for(resource_id, revision):
        raise EtagMismatch(
            f"etag {expected!r} does not match the current version of {resource_id!r}; "
            "get the resource again and retry",
            field="etag",
        )
