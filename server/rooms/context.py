"""What an agent sees when it speaks in a room: its instructions, who is in
the room, and the room's recent messages (its own as assistant turns, the
others' as user turns naming their speaker)."""

from __future__ import annotations

from collections.abc import Sequence

from aster.server.agents.models import Agent
from aster.server.providers.base import ChatMessage
from aster.server.rooms.models import Member, Room, RoomMessage, RoomRole

# The most recent messages an agent is shown.
CONTEXT_MESSAGES = 200


def room_preamble(room: Room, agent: Agent, role: RoomRole) -> str:
    """The system text that tells an agent where it is."""
    others = ", ".join(_describe(m) for m in room.spec.members if m.who.key != agent.id)
    return (
        f"You are {agent.spec.display_name} (id {agent.id}), a {role.value.lower()} in the "
        f"room {room.spec.display_name!r}. The other members are: {others or 'nobody'}. "
        "Messages from others are shown as '[speaker]: text'; mention a member with @id."
    )


def _describe(member: Member) -> str:
    kind = "agent" if member.who.is_agent else "human"
    return f"{member.who.key} ({kind}, {member.role.value.lower()})"


def speaker_label(message: RoomMessage) -> str:
    """How a message's speaker is shown to agents: the task of a
    collaboration as `task`."""
    return "task" if message.speaker.is_system else message.speaker.key


def room_context(
    room: Room, agent: Agent, role: RoomRole, history: Sequence[RoomMessage]
) -> list[ChatMessage]:
    """The conversation sent to the model for `agent`'s next reply."""
    system = room_preamble(room, agent, role)
    if agent.spec.instructions:
        system = f"{agent.spec.instructions}\n\n{system}"
    messages = [ChatMessage(role="system", content=system)]
    for message in history[-CONTEXT_MESSAGES:]:
        if message.speaker.agent_id == agent.id:
            messages.append(ChatMessage(role="assistant", content=message.text))
        else:
            messages.append(
                ChatMessage(role="user", content=f"[{speaker_label(message)}]: {message.text}")
            )
    return messages
