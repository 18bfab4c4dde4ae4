"""Whose model summarises a consolidation's merges: the scope's agent, its
session's agent, its room's leader (else the room's first agent member);
the tenant's shared scope has none and merges extractively."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from aster.server.errors import NotFound
from aster.server.memory.consolidation import Summarizer, extractive_merge
from aster.server.memory.semantic_models import Scope
from aster.server.rooms.models import Member, Room, RoomRole, RoomSpec, Speaker

NOW = datetime(2024, 1, 1, tzinfo=UTC)
TEXTS = ["The user lives in Lyon.", "The user lives in Lyon, France."]


@dataclass
class _SessionSpec:
    agent_id: str


@dataclass
class _Session:
    spec: _SessionSpec


class Sessions:
    async def get(self, tenant: str, session_id: str) -> _Session:
        return _Session(_SessionSpec(agent_id=f"agt_of_{session_id}"))


class Rooms:
    def __init__(self, rooms: dict[str, list[Member]]) -> None:
        self._rooms = rooms

    async def get(self, tenant: str, room_id: str) -> Room:
        if room_id not in self._rooms:
            raise NotFound(f"room {room_id!r} not found")
        return Room(room_id, RoomSpec("r", self._rooms[room_id]), NOW, NOW)


class NoAgents:
    """Every agent lookup fails: the agent was deleted."""

    async def get(self, tenant: str, agent_id: str) -> Any:
        raise NotFound(f"agent {agent_id!r} not found")


def human(name: str) -> Member:
    return Member(Speaker(participant_id=name))


def agent(agent_id: str, role: RoomRole = RoomRole.WORKER) -> Member:
    return Member(Speaker(agent_id=agent_id), role)


@pytest.fixture
def summarizer() -> Summarizer:
    rooms = Rooms(
        {
            "room_led": [human("ana"), agent("agt_w"), agent("agt_l", RoomRole.LEADER)],
            "room_flat": [human("ana"), agent("agt_o", RoomRole.OBSERVER), agent("agt_w")],
            "room_humans": [human("ana")],
        }
    )
    return Summarizer(None, None, Sessions(), rooms)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (Scope(agent_id="agt_a"), "agt_a"),
        (Scope(agent_id="agt_a", session_id="ses_1", room_id="room_led"), "agt_a"),
        (Scope(session_id="ses_1"), "agt_of_ses_1"),
        (Scope(session_id="ses_1", room_id="room_led"), "agt_of_ses_1"),
        (Scope(room_id="room_led"), "agt_l"),
        (Scope(room_id="room_flat"), "agt_o"),
        (Scope(room_id="room_humans"), ""),
        (Scope(), ""),
    ],
)
async def test_the_scope_agent(summarizer: Summarizer, scope: Scope, expected: str) -> None:
    assert await summarizer.scope_agent_id("t1", scope) == expected


async def test_without_an_agent_the_merge_is_extractive() -> None:
    rooms = Rooms({"room_led": [agent("agt_l", RoomRole.LEADER)]})
    summarizer = Summarizer(NoAgents(), object(), Sessions(), rooms)  # type: ignore[arg-type]
    expected = extractive_merge(TEXTS)
    assert expected == "The user lives in Lyon, France."
    # The tenant's shared scope has no agent; a deleted session or room
    # agent falls back the same way.
    for scope in (Scope(), Scope(session_id="ses_1"), Scope(room_id="room_led")):
        assert await summarizer.merge("t1", scope, TEXTS) == expected
