"""The rules rooms, members, messages and collaborations must satisfy;
errors name the offending field."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from aster.server.display_text import check_display_name
from aster.server.errors import InvalidArgument
from aster.server.ids import check_id
from aster.server.labels import validate_labels
from aster.server.rooms.models import (
    SYSTEM_PARTICIPANT,
    RoomRole,
    RoomSpec,
    RoomStrategy,
    Speaker,
)

MAX_MEMBERS = 100
MAX_TEXT = 100_000
MAX_TASK = 100_000
MAX_MENTIONS = 100
MAX_STOP_CONDITION = 200
MAX_TURNS_LIMIT = 100

C = TypeVar("C", bound=StrEnum)


def _fail(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field)


def parse_role(text: str, field: str = "role") -> RoomRole:
    """The role named `text` (ignoring case; empty means worker)."""
    return _parse_choice(RoomRole, RoomRole.WORKER, text, field, "role")


def parse_strategy(text: str, field: str = "strategy") -> RoomStrategy:
    """The strategy named `text` (ignoring case; empty means round_robin)."""
    return _parse_choice(RoomStrategy, RoomStrategy.ROUND_ROBIN, text, field, "strategy")


def _parse_choice(choices: type[C], default: C, text: str, field: str, noun: str) -> C:
    """The member of `choices` whose value is `text` (ignoring case and
    surrounding blanks; empty means `default`), else INVALID_ARGUMENT
    listing the allowed values."""
    name = text.strip().lower()
    if not name:
        return default
    try:
        return choices(name)
    except ValueError:
        allowed = ", ".join(c.value for c in choices)
        raise _fail(field, f"{text[:40]!r} is not a {noun}; use one of: {allowed}") from None


def check_speaker(who: Speaker, prefix: str = "") -> Speaker:
    """`who` if exactly one of agent_id and participant_id is a well-formed id."""
    if who.agent_id and who.participant_id:
        raise _fail(f"{prefix}agent_id", "set agent_id or participant_id, not both")
    if who.agent_id:
        check_id(who.agent_id, f"{prefix}agent_id")
    elif who.participant_id:
        check_id(who.participant_id, f"{prefix}participant_id")
    else:
        raise _fail(f"{prefix}agent_id", "set agent_id or participant_id")
    return who


def check_new_member(who: Speaker, prefix: str = "") -> Speaker:
    """`who` (see check_speaker) if it may become a member: the participant
    id `system` is reserved for the task of a collaboration."""
    check_speaker(who, prefix)
    if not who.is_agent and who.participant_id == SYSTEM_PARTICIPANT:
        raise _fail(
            f"{prefix}participant_id",
            f"{SYSTEM_PARTICIPANT!r} is reserved for the task of a collaboration",
        )
    return who


def validate_room_spec(spec: RoomSpec) -> None:
    """Raises InvalidArgument for the first field of `spec` that breaks a rule."""
    check_display_name(spec.display_name, "room.display_name")
    if len(spec.members) > MAX_MEMBERS:
        raise _fail("room.members", f"at most {MAX_MEMBERS} members")
    seen: set[tuple[bool, str]] = set()
    for index, member in enumerate(spec.members):
        check_new_member(member.who, f"room.members[{index}].")
        key = (member.who.is_agent, member.who.key)
        if key in seen:
            raise _fail(f"room.members[{index}]", f"{member.who.key!r} is listed twice")
        seen.add(key)
    validate_labels(spec.labels, "room.labels")


def validate_text(text: str, mentions: int) -> None:
    """A message's text and mention count."""
    if not text.strip():
        raise _fail("text", "must not be empty")
    if len(text) > MAX_TEXT:
        raise _fail("text", f"must be at most {MAX_TEXT} characters")
    if mentions > MAX_MENTIONS:
        raise _fail("mentions", f"at most {MAX_MENTIONS}")


def validate_run(task: str, max_turns: int, stop_condition: str) -> None:
    """The parameters of RunRoom."""
    if not task.strip():
        raise _fail("task", "must not be empty")
    if len(task) > MAX_TASK:
        raise _fail("task", f"must be at most {MAX_TASK} characters")
    if max_turns < 0 or max_turns > MAX_TURNS_LIMIT:
        raise _fail("max_turns", f"must be between 0 and {MAX_TURNS_LIMIT} (got {max_turns})")
    if len(stop_condition) > MAX_STOP_CONDITION:
        raise _fail("stop_condition", f"must be at most {MAX_STOP_CONDITION} characters")
