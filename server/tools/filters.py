"""Parses the `filter` of ListTools: conditions joined by AND.

kind=HTTP AND labels.team=ml AND labels.tier:*
"""

from __future__ import annotations

import re

from aster.server.agents.filters import LABEL_KEY
from aster.server.errors import InvalidArgument
from aster.server.tools.models import ToolFilter, ToolKind

_CONDITION = re.compile(
    rf"""^(?:
        (?P<field>kind)\s*=\s*(?P<kind>"?[A-Za-z_]+"?)
      | labels\.(?P<key>{LABEL_KEY})\s*(?:=\s*(?P<value>"[^"]*"|[A-Za-z0-9_.\-/]+)|:\s*(?P<any>\*))
    )$""",
    re.VERBOSE,
)
_AND = re.compile(r"\s+AND\s+")
_KINDS = (ToolKind.BUILTIN, ToolKind.HTTP)


def parse_tool_filter(text: str) -> ToolFilter:
    """The filter described by `text`; INVALID_ARGUMENT naming the bad part."""
    text = text.strip()
    if not text:
        return ToolFilter()
    kind: ToolKind | None = None
    equal: list[tuple[str, str]] = []
    present: list[str] = []
    for part in _AND.split(text):
        match = _CONDITION.match(part.strip())
        if match is None:
            raise InvalidArgument(
                f"filter: cannot parse {part.strip()!r}; use kind=<KIND>, "
                "labels.<key>=<value> or labels.<key>:*, joined by AND",
                field="filter",
            )
        if match["field"]:
            name = match["kind"].strip('"').upper().removeprefix("TOOL_KIND_")
            if name not in {k.value for k in _KINDS}:
                raise InvalidArgument(
                    f"filter: unknown kind {match['kind']!r}; use BUILTIN or HTTP",
                    field="filter",
                )
            kind = ToolKind(name)
        elif match["any"]:
            present.append(match["key"])
        else:
            equal.append((match["key"], match["value"].strip('"')))
    return ToolFilter(kind=kind, labels_equal=tuple(equal), labels_present=tuple(present))
