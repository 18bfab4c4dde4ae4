"""Room messages ⇄ room domain types, and stream events → RoomEvent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aster.server.clock import as_utc
from aster.server.errors import InvalidArgument
from aster.server.rooms.models import (
    DELTA,
    JOIN,
    LEAVE,
    MESSAGE,
    RUN_UPDATE,
    SYSTEM_PARTICIPANT,
    TURN_CHANGE,
    TYPING,
    Member,
    Room,
    RoomMessage,
    RoomRole,
    RoomRun,
    RoomSpec,
    RoomStrategy,
    Speaker,
)
from aster.server.rooms.validation import parse_role
from aster.server.rpc.convert import dict_to_struct, struct_to_dict, timestamp
from aster.server.runs.models import MultitaskStrategy, RunStatus
from aster.server.streams.models import StreamEvent
from aster.v1 import room_pb2, run_pb2

_POLICIES = {
    run_pb2.MULTITASK_STRATEGY_UNSPECIFIED: MultitaskStrategy.REJECT,
    run_pb2.MULTITASK_STRATEGY_REJECT: MultitaskStrategy.REJECT,
    run_pb2.MULTITASK_STRATEGY_ENQUEUE: MultitaskStrategy.ENQUEUE,
    run_pb2.MULTITASK_STRATEGY_INTERRUPT: MultitaskStrategy.INTERRUPT,
}
_POLICIES_OUT = {v: k for k, v in _POLICIES.items() if k}


def _enum(table: dict[Any, Any], value: int, field: str) -> Any:
    if value not in table:
        raise InvalidArgument(f"{field}: unknown value {value}", field=field)
    return table[value]


def speaker_of(message: Any) -> Speaker:
    """The agent_id / participant_id of a request or member message."""
    return Speaker(agent_id=message.agent_id, participant_id=message.participant_id)


def spec_from_proto(message: room_pb2.Room) -> RoomSpec:
    """The caller-settable fields of `message`."""
    members = [
        Member(speaker_of(m), parse_role(m.role, f"room.members[{i}].role"))
        for i, m in enumerate(message.members)
    ]
    return RoomSpec(
        display_name=message.display_name,
        members=members,
        double_text_policy=_enum(_POLICIES, message.double_text_policy, "room.double_text_policy"),
        labels=dict(message.labels),
        metadata=struct_to_dict(message.metadata, "room.metadata"),
    )


def member_to_proto(member: Member) -> room_pb2.RoomMember:
    """The message of a member."""
    out = room_pb2.RoomMember(role=member.role.value)
    if member.who.agent_id:
        out.agent_id = member.who.agent_id
    else:
        out.participant_id = member.who.participant_id
    if member.join_time is not None:
        out.join_time.CopyFrom(timestamp(member.join_time))
    return out


def room_to_proto(room: Room) -> room_pb2.Room:
    """The full message of a stored room."""
    spec = room.spec
    return room_pb2.Room(
        id=room.id,
        display_name=spec.display_name,
        members=[member_to_proto(m) for m in spec.members],
        double_text_policy=_POLICIES_OUT[spec.double_text_policy],
        labels=spec.labels,
        metadata=dict_to_struct(spec.metadata),
        create_time=timestamp(room.create_time),
        update_time=timestamp(room.update_time),
        etag=room.etag,
    )


def message_to_proto(message: RoomMessage) -> room_pb2.RoomMessage:
    """The message of a room message."""
    out = room_pb2.RoomMessage(
        room_id=message.room_id,
        seq=message.seq,
        text=message.text,
        mentions=list(message.mentions),
        room_run_id=message.room_run_id,
    )
    if message.speaker.agent_id:
        out.agent_id = message.speaker.agent_id
    else:
        # A task stored before tasks had a speaker has neither id: it is the
        # system's too, so that every message names its speaker.
        out.participant_id = message.speaker.participant_id or SYSTEM_PARTICIPANT
    if message.create_time is not None:
        out.create_time.CopyFrom(timestamp(message.create_time))
    return out


def run_to_proto(run: RoomRun) -> room_pb2.RoomRun:
    """The message of a room run."""
    out = room_pb2.RoomRun(
        id=run.id,
        room_id=run.room_id,
        task=run.task,
        strategy=run.strategy.value,
        max_turns=run.max_turns,
        stop_condition=run.stop_condition,
        status=run_pb2.RunStatus.Value(f"RUN_STATUS_{run.status.value}"),
        turns=run.turns,
        usage=run_pb2.Usage(input_tokens=run.input_tokens, output_tokens=run.output_tokens),
        error=run.error,
        result=run.result,
        create_time=timestamp(run.create_time),
    )
    if run.end_time is not None:
        out.end_time.CopyFrom(timestamp(run.end_time))
    return out


def _time(value: Any) -> datetime | None:
    return as_utc(datetime.fromisoformat(value)) if value else None


def _run_from_data(data: dict[str, Any]) -> RoomRun:
    return RoomRun(
        id=data["id"],
        room_id=data["room_id"],
        task=data["task"],
        strategy=RoomStrategy(data["strategy"]),
        max_turns=data["max_turns"],
        stop_condition=data["stop_condition"],
        status=RunStatus(data["status"]),
        create_time=_time(data["create_time"]) or as_utc(datetime.min),
        turns=data["turns"],
        input_tokens=data["input_tokens"],
        output_tokens=data["output_tokens"],
        error=data["error"],
        result=data["result"],
        end_time=_time(data.get("end_time")),
    )


def event_to_proto(room_id: str, event: StreamEvent) -> room_pb2.RoomEvent:
    """The RoomEvent of a stored stream event."""
    data = event.data
    out = room_pb2.RoomEvent(room_id=room_id, seq=event.seq)
    if event.create_time is not None:
        out.create_time.CopyFrom(timestamp(event.create_time))
    who = Speaker(data.get("agent_id", ""), data.get("participant_id", ""))
    if event.kind == MESSAGE:
        message = RoomMessage(
            room_id,
            event.seq,
            who,
            data["text"],
            tuple(data.get("mentions", ())),
            data.get("room_run_id", ""),
            event.create_time,
        )
        out.message.CopyFrom(message_to_proto(message))
    elif event.kind in (JOIN, LEAVE):
        member = member_to_proto(Member(who, RoomRole(data["role"]), _time(data.get("join_time"))))
        getattr(out, event.kind).CopyFrom(member)
    elif event.kind == TYPING:
        out.typing.agent_id = who.agent_id
    elif event.kind == DELTA:
        out.delta.CopyFrom(room_pb2.RoomAgentDelta(agent_id=who.agent_id, delta=data["delta"]))
    elif event.kind == TURN_CHANGE:
        out.turn_change.CopyFrom(
            room_pb2.RoomTurnChange(
                room_run_id=data["room_run_id"],
                turn=data["turn"],
                agent_id=who.agent_id,
                task=data.get("task", ""),
            )
        )
    elif event.kind == RUN_UPDATE:
        out.run_update.CopyFrom(run_to_proto(_run_from_data(data)))
    return out
