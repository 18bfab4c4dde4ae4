"""Parses the `filter` of ListAgents: conditions joined by AND.

state=ACTIVE AND labels.team=ml AND labels.tier:*
"""

from __future__ import annotations

from aster.server.agents.models import AgentFilter, AgentState
from aster.server.labels import parse_label_filter

_STATES = {state.value: state for state in AgentState}


def parse_agent_filter(text: str) -> AgentFilter:
    """The filter described by `text`; INVALID_ARGUMENT naming the bad part."""
    parsed = parse_label_filter(text, "state", _STATES, "AGENT_STATE_")
    return AgentFilter(
        state=parsed.value, labels_equal=parsed.labels_equal, labels_present=parsed.labels_present
    )
