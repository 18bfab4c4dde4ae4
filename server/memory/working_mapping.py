"""Working-memory messages ⇄ working-memory domain types."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from aster.server.errors import InvalidArgument
from aster.server.memory.working_models import EntryValue, Scope, WorkingMemoryEntry, Writer
from aster.server.rpc.convert import timestamp
from aster.v1 import memory_pb2


def value_from_proto(message: struct_pb2.Value, field: str) -> Any:
    """A Value as a plain JSON value; INVALID_ARGUMENT naming `field` if it
    holds what JSON cannot (NaN, Infinity)."""
    try:
        return json_format.MessageToDict(message)
    except ValueError:
        raise InvalidArgument(
            f"{field}: numbers must be finite (no NaN or Infinity)", field=field
        ) from None


def value_to_proto(value: Any) -> struct_pb2.Value:
    """A plain JSON value as a Value."""
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def scope_of(message: Any) -> Scope:
    """The scope named by a message's `agent_id`, `session_id` and `room_id`."""
    return Scope(message.agent_id, message.session_id, message.room_id)


def entry_value_from_proto(message: memory_pb2.WorkingMemoryEntry, *, required: bool) -> EntryValue:
    """The value and TTL of `message`; with `required`, a missing value is
    INVALID_ARGUMENT (JSON `null` is a value)."""
    if not message.HasField("value"):
        if required:
            raise InvalidArgument("entry.value is required", field="entry.value")
        return EntryValue(None, message.ttl_seconds)
    return EntryValue(value_from_proto(message.value, "entry.value"), message.ttl_seconds)


def set_fields(message: memory_pb2.WorkingMemoryEntry) -> list[str]:
    """The implied update mask: `value` if the entry has one, `ttl_seconds`
    if it is not 0."""
    paths = []
    if message.HasField("value"):
        paths.append("value")
    if message.ttl_seconds:
        paths.append("ttl_seconds")
    return paths


def writer_to_proto(writer: Writer) -> memory_pb2.WorkingMemoryWriter:
    """The message of an entry's last writer."""
    return memory_pb2.WorkingMemoryWriter(
        agent_id=writer.agent_id,
        session_id=writer.session_id,
        run_id=writer.run_id,
        tool_call_id=writer.tool_call_id,
        principal=writer.principal,
    )


def entry_to_proto(entry: WorkingMemoryEntry) -> memory_pb2.WorkingMemoryEntry:
    """The full message of a stored entry."""
    message = memory_pb2.WorkingMemoryEntry(
        id=entry.id,
        key=entry.key,
        value=value_to_proto(entry.value),
        ttl_seconds=entry.ttl_seconds,
        agent_id=entry.scope.agent_id,
        session_id=entry.scope.session_id,
        room_id=entry.scope.room_id,
        create_time=timestamp(entry.create_time),
        update_time=timestamp(entry.update_time),
        etag=entry.etag,
        writer=writer_to_proto(entry.writer),
    )
    if entry.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(entry.expire_time))
    return message
