"""Parses the `filter` of ListTools: conditions joined by AND.

kind=HTTP AND labels.team=ml AND labels.tier:*
"""

from __future__ import annotations

from aster.server.labels import parse_label_filter
from aster.server.tools.models import ToolFilter, ToolKind

_KINDS = {kind.value: kind for kind in (ToolKind.BUILTIN, ToolKind.HTTP)}


def parse_tool_filter(text: str) -> ToolFilter:
    """The filter described by `text`; INVALID_ARGUMENT naming the bad part."""
    parsed = parse_label_filter(text, "kind", _KINDS, "TOOL_KIND_")
    return ToolFilter(
        kind=parsed.value, labels_equal=parsed.labels_equal, labels_present=parsed.labels_present
    )
