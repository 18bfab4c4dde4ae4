"""Applies an update mask to a domain dataclass, for every Update call."""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from aster.server.errors import InvalidArgument

T = TypeVar("T")
REPLACE_ALL = "*"


def apply_update_mask(current: T, patch: T, paths: Sequence[str], allowed: Collection[str]) -> T:
    """A copy of `current` with each dotted path in `paths` taken from `patch`.

    `*` alone takes every field of `patch`. A path not in `allowed` gives
    INVALID_ARGUMENT naming it."""
    if list(paths) == [REPLACE_ALL]:
        return copy.deepcopy(patch)
    if not paths:
        raise InvalidArgument("update_mask names no field to update", field="update_mask")
    result = copy.deepcopy(current)
    for path in paths:
        if path == REPLACE_ALL:
            raise InvalidArgument("'*' must be the only path of update_mask", field="update_mask")
        if path not in allowed:
            raise InvalidArgument(
                f"update_mask: {path!r} is not a field that can be updated; "
                f"use any of {', '.join(sorted(allowed))} or '*'",
                field="update_mask",
            )
        *parents, leaf = path.split(".")
        source: Any = patch
        target: Any = result
        for name in parents:
            source = getattr(source, name)
            target = getattr(target, name)
        setattr(target, leaf, copy.deepcopy(getattr(source, leaf)))
    return result
