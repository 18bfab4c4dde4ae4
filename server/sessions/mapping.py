"""Session messages ⇄ session domain types."""

from __future__ import annotations

from aster.server.rpc.convert import dict_to_struct, struct_to_dict, timestamp
from aster.server.sessions.models import Checkpoint, Message, Session, SessionSpec
from aster.v1 import run_pb2, session_pb2

OUTPUT_FIELDS = frozenset(
    {"id", "etag", "create_time", "update_time", "parent_session_id", "parent_checkpoint_id"}
)
_ROLES = {
    "system": run_pb2.MESSAGE_ROLE_SYSTEM,
    "user": run_pb2.MESSAGE_ROLE_USER,
    "assistant": run_pb2.MESSAGE_ROLE_ASSISTANT,
    "tool": run_pb2.MESSAGE_ROLE_TOOL,
}


def spec_from_proto(message: session_pb2.Session) -> SessionSpec:
    """The caller-settable fields of `message`."""
    return SessionSpec(
        agent_id=message.agent_id,
        display_name=message.display_name,
        labels=dict(message.labels),
        metadata=struct_to_dict(message.metadata, "session.metadata"),
    )


def set_fields(message: session_pb2.Session) -> list[str]:
    """The implied update mask: the caller-settable fields `message` sets."""
    return [f.name for f, _ in message.ListFields() if f.name not in OUTPUT_FIELDS]


def session_to_proto(session: Session) -> session_pb2.Session:
    """The full message of a stored session."""
    return session_pb2.Session(
        id=session.id,
        agent_id=session.spec.agent_id,
        display_name=session.spec.display_name,
        labels=session.spec.labels,
        metadata=dict_to_struct(session.spec.metadata),
        parent_session_id=session.parent_session_id,
        parent_checkpoint_id=session.parent_checkpoint_id,
        create_time=timestamp(session.create_time),
        update_time=timestamp(session.update_time),
        etag=session.etag,
    )


def message_to_proto(message: Message) -> run_pb2.Message:
    """A stored message."""
    return run_pb2.Message(
        id=message.id,
        role=_ROLES[message.role],
        content=message.content,
        tool_calls=[
            run_pb2.ToolCall(id=c.id, tool_id=c.tool_id, arguments=dict_to_struct(c.arguments))
            for c in message.tool_calls
        ],
        tool_call_id=message.tool_call_id,
        run_id=message.run_id,
        create_time=timestamp(message.create_time),
    )


def checkpoint_to_proto(checkpoint: Checkpoint) -> session_pb2.Checkpoint:
    """A stored checkpoint."""
    return session_pb2.Checkpoint(
        id=checkpoint.id,
        session_id=checkpoint.session_id,
        run_id=checkpoint.run_id,
        turn=checkpoint.turn,
        message_count=checkpoint.message_count,
        last_message_id=checkpoint.last_message_id,
        state=dict_to_struct(checkpoint.state),
        create_time=timestamp(checkpoint.create_time),
    )
