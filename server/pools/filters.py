"""Parses the `filter` of ListPoolAgents: `state=<STATE>`."""

from __future__ import annotations

from aster.server.errors import InvalidArgument
from aster.server.labels import parse_label_filter
from aster.server.pools.models import PoolAgentState

_STATES = {state.value: state for state in PoolAgentState}


def parse_pool_filter(text: str) -> PoolAgentState | None:
    """The state the filter asks for (None: any); INVALID_ARGUMENT naming
    the bad part."""
    parsed = parse_label_filter(text, "state", _STATES, "POOL_AGENT_STATE_")
    if parsed.labels_equal or parsed.labels_present:
        raise InvalidArgument(
            "filter: pooled agents have no labels; use state=<STATE>", field="filter"
        )
    return parsed.value
