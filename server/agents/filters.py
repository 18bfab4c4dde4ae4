"""Parses the `filter` of ListAgents: conditions joined by AND.

state=ACTIVE AND labels.team=ml AND labels.tier:*
"""

from __future__ import annotations

import re

from aster.server.agents.models import AgentFilter, AgentState
from aster.server.errors import InvalidArgument

LABEL_KEY = r"[a-z][a-z0-9_.\-/]{0,62}"
_CONDITION = re.compile(
    rf"""^(?:
        (?P<field>state)\s*=\s*(?P<state>"?[A-Za-z_]+"?)
      | labels\.(?P<key>{LABEL_KEY})\s*(?:=\s*(?P<value>"[^"]*"|[A-Za-z0-9_.\-/]+)|:\s*(?P<any>\*))
    )$""",
    re.VERBOSE,
)
_AND = re.compile(r"\s+AND\s+")


def parse_agent_filter(text: str) -> AgentFilter:
    """The filter described by `text`; INVALID_ARGUMENT naming the bad part."""
    text = text.strip()
    if not text:
        return AgentFilter()
    state: AgentState | None = None
    equal: list[tuple[str, str]] = []
    present: list[str] = []
    for part in _AND.split(text):
        match = _CONDITION.match(part.strip())
        if match is None:
            raise InvalidArgument(
                f"filter: cannot parse {part.strip()!r}; use state=<STATE>, "
                "labels.<key>=<value> or labels.<key>:*, joined by AND",
                field="filter",
            )
        if match["field"]:
            name = match["state"].strip('"').upper().removeprefix("AGENT_STATE_")
            if name not in AgentState.__members__:
                raise InvalidArgument(
                    f"filter: unknown state {match['state']!r}; use ACTIVE or DISABLED",
                    field="filter",
                )
            state = AgentState[name]
        elif match["any"]:
            present.append(match["key"])
        else:
            equal.append((match["key"], match["value"].strip('"')))
    return AgentFilter(state=state, labels_equal=tuple(equal), labels_present=tuple(present))
