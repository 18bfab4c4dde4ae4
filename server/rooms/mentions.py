"""@mentions: parsed from a message's text and given explicitly."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from aster.server.errors import InvalidArgument

_MENTION = re.compile(r"(?<![\w@])@([a-z][a-z0-9_-]{0,62})")


def parse_mentions(text: str, members: Collection[str]) -> list[str]:
    """The member ids `text` @mentions, in order of first mention; an
    @word that names no member is plain text."""
    found: list[str] = []
    for match in _MENTION.finditer(text):
        name = match.group(1)
        if name not in members:
            # "@agt_x." or "@agt_x-" at the end of a sentence: trim trailing punctuation.
            name = name.rstrip("-_")
        if name in members and name not in found:
            found.append(name)
    return found


def resolve_mentions(text: str, explicit: Sequence[str], members: Collection[str]) -> list[str]:
    """Explicit mentions (each must be a member: INVALID_ARGUMENT naming it
    otherwise) followed by those parsed from `text`, without repeats."""
    result: list[str] = []
    for index, name in enumerate(explicit):
        if name not in members:
            raise InvalidArgument(
                f"mentions[{index}]: {name[:80]!r} is not a member of the room",
                field=f"mentions[{index}]",
            )
        if name not in result:
            result.append(name)
    for name in parse_mentions(text, members):
        if name not in result:
            result.append(name)
    return result
