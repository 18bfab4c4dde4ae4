"""The data of a room's stream events, in domain form (mapping.py turns an
event into a RoomEvent message)."""

from __future__ import annotations

from typing import Any

from aster.server.rooms.models import Member, RoomMessage, RoomRun, Speaker


def speaker_data(who: Speaker) -> dict[str, Any]:
    """The speaker fields of an event."""
    return {"agent_id": who.agent_id, "participant_id": who.participant_id}


def message_data(message: RoomMessage) -> dict[str, Any]:
    """A `message` event (its seq and time are the event's)."""
    return {
        **speaker_data(message.speaker),
        "text": message.text,
        "mentions": list(message.mentions),
        "room_run_id": message.room_run_id,
    }


def member_data(member: Member) -> dict[str, Any]:
    """A `join` or `leave` event."""
    return {
        **speaker_data(member.who),
        "role": member.role.value,
        "join_time": member.join_time.isoformat() if member.join_time else None,
    }


def run_data(run: RoomRun) -> dict[str, Any]:
    """A `run_update` event: the whole run."""
    return {
        "id": run.id,
        "room_id": run.room_id,
        "task": run.task,
        "strategy": run.strategy.value,
        "max_turns": run.max_turns,
        "stop_condition": run.stop_condition,
        "status": run.status.value,
        "turns": run.turns,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "error": run.error,
        "result": run.result,
        "create_time": run.create_time.isoformat(),
        "end_time": run.end_time.isoformat() if run.end_time else None,
    }
