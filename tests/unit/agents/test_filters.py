"""The ListAgents filter grammar."""

from __future__ import annotations

import pytest

from aster.server.agents.filters import parse_agent_filter
from aster.server.agents.models import AgentFilter, AgentState
from aster.server.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", AgentFilter()),
        ("state=ACTIVE", AgentFilter(state=AgentState.ACTIVE)),
        ("state = AGENT_STATE_DISABLED", AgentFilter(state=AgentState.DISABLED)),
        ('labels.team="ml ops"', AgentFilter(labels_equal=(("team", "ml ops"),))),
        (
            "labels.team=ml AND labels.tier:* AND state=disabled",
            AgentFilter(
                state=AgentState.DISABLED,
                labels_equal=(("team", "ml"),),
                labels_present=("tier",),
            ),
        ),
    ],
)
def test_parses(text: str, expected: AgentFilter) -> None:
    assert parse_agent_filter(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "labels.v=2+AND+labels.team=rest",
        "state=SLEEPING",
        "name=x",
        "labels.Team=x",
        "labels.team",
        "state=ACTIVE OR state=x",
    ],
)
def test_rejects_with_the_field_named(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_agent_filter(text)
    assert caught.value.field == "filter"
