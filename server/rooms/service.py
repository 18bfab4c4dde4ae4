"""The rules of the rooms area: rooms and their members, talk (Say,
history, the live stream) and collaborations (RunRoom)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import cast

from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import FailedPrecondition, InvalidArgument, NotFound
from aster.server.etags import check_etag
from aster.server.ids import check_id, new_id
from aster.server.pagination import (
    Cursor,
    Page,
    decode_token,
    encode_token,
    next_page,
    page_size,
)
from aster.server.rooms.collaboration import Collaboration, Dependencies, leader_of, speakers
from aster.server.rooms.events import member_data, run_data
from aster.server.rooms.filters import parse_room_filter
from aster.server.rooms.mentions import parse_mentions, resolve_mentions
from aster.server.rooms.models import (
    JOIN,
    LEAVE,
    RUN_UPDATE,
    Member,
    Room,
    RoomMessage,
    RoomRole,
    RoomRun,
    RoomSpec,
    RoomStrategy,
    Speaker,
    stream_name,
)
from aster.server.rooms.posting import post_message
from aster.server.rooms.runner import RoomRunner
from aster.server.rooms.validation import (
    check_new_member,
    check_speaker,
    validate_room_spec,
    validate_run,
    validate_text,
)
from aster.server.rooms.voice import AgentVoice
from aster.server.runs.models import MultitaskStrategy, RunStatus
from aster.server.storage.room_repository import RoomRepository
from aster.server.streams.log import StreamLog
from aster.server.streams.models import StreamEvent

ID_PREFIX = "room"
RUN_ID_PREFIX = "rrun"
INTERRUPTED = "interrupted by a new message (double_text_policy INTERRUPT)"


class RoomService:
    """Rooms of every tenant; each call names the caller's tenant."""

    def __init__(
        self,
        repository: RoomRepository,
        log: StreamLog,
        agents: AgentService,
        voice: AgentVoice,
        runner: RoomRunner,
        default_max_turns: int,
    ) -> None:
        self._repository = repository
        self._log = log
        self._agents = agents
        self._runner = runner
        self._deps = Dependencies(repository, log, agents, voice)
        self._default_max_turns = default_max_turns

    # Rooms ------------------------------------------------------------------

    async def create(self, tenant: str, spec: RoomSpec, proposed_id: str = "") -> Room:
        """Validates and stores a new room with its members."""
        room_id = check_id(proposed_id, "room_id") if proposed_id else new_id(ID_PREFIX)
        validate_room_spec(spec)
        for index, member in enumerate(spec.members):
            if member.who.is_agent:
                await self._agent_exists(tenant, member.who.agent_id, f"room.members[{index}]")
        now = utcnow()
        spec.members = [Member(m.who, m.role, now) for m in spec.members]
        room = Room(id=room_id, spec=spec, create_time=now, update_time=now)
        events = await self._repository.create(
            tenant, room, [(JOIN, member_data(m)) for m in spec.members]
        )
        await self._log.publish(events)
        return room

    async def get(self, tenant: str, room_id: str) -> Room:
        """One room with its members, or NOT_FOUND."""
        return await self._repository.get(tenant, check_id(room_id, "id"))

    async def list(self, tenant: str, size: int, token: str, filter_text: str) -> Page[Room]:
        """One page of rooms matching `filter_text`, oldest first."""
        limit = page_size(size)
        where = parse_room_filter(filter_text)
        query = f"filter={filter_text.strip()}"
        rooms, more = await self._repository.list_page(
            tenant, where, decode_token(token, query), limit
        )
        return next_page(rooms, more, query, lambda r: r.create_time.isoformat())

    async def delete(self, tenant: str, room_id: str, etag: str) -> None:
        """Deletes the room, its history and stream; a running collaboration
        is cancelled. ABORTED if `etag` is set and stale."""
        room = await self.get(tenant, room_id)
        check_etag(etag, room.id, room.revision)
        active = await self._repository.active_run(tenant, room.id)
        if active is not None:
            await self._runner.cancel_everywhere(active.id)
        await self._repository.delete(tenant, room.id, room.revision if etag else None)

    # Members ----------------------------------------------------------------

    async def join(self, tenant: str, room_id: str, who: Speaker, role: RoomRole) -> Member:
        """Adds a member; ALREADY_EXISTS if it is one."""
        check_id(room_id, "room_id")
        check_new_member(who)
        if who.is_agent:
            await self._agent_exists(tenant, who.agent_id, "")
        member = Member(who, role, utcnow())
        events = await self._repository.add_member(
            tenant, room_id, member, (JOIN, member_data(member))
        )
        await self._log.publish(events)
        return member

    async def leave(self, tenant: str, room_id: str, who: Speaker) -> None:
        """Removes a member; NOT_FOUND if it is none."""
        check_id(room_id, "room_id")
        check_speaker(who)
        member = Member(who, RoomRole.WORKER, None)
        events = await self._repository.remove_member(
            tenant, room_id, who, utcnow(), (LEAVE, member_data(member))
        )
        await self._log.publish(events)

    async def members(self, tenant: str, room_id: str, size: int, token: str) -> Page[Member]:
        """One page of the room's members, in joining order."""
        check_id(room_id, "room_id")
        limit = page_size(size)
        query = f"members={room_id}"
        after = decode_token(token, query)
        rows, more = await self._repository.members_page(
            tenant, room_id, after.number() if after else -1, limit
        )
        members = [m for _, m in rows]
        token_out = ""
        if more and rows:
            token_out = encode_token(Cursor(str(rows[-1][0]), rows[-1][1].who.key), query)
        return Page(members, token_out)

    # Talk -------------------------------------------------------------------

    async def say(
        self, tenant: str, room_id: str, who: Speaker, text: str, mentions: Sequence[str]
    ) -> RoomMessage:
        """Posts a member's message, following the room's double-text policy
        if a collaboration is running."""
        check_id(room_id, "room_id")
        check_speaker(who)
        validate_text(text, len(mentions))
        room = await self._repository.get(tenant, room_id)
        keys = [m.who.key for m in room.spec.members]
        if not any(m.who == who for m in room.spec.members):
            field = "agent_id" if who.is_agent else "participant_id"
            raise InvalidArgument(
                f"{field}: {who.key!r} is not a member of room {room_id!r}", field=field
            )
        resolved = resolve_mentions(text, mentions, keys)
        active = await self._repository.active_run(tenant, room_id)
        if active is not None:
            policy = room.spec.double_text_policy
            if policy is MultitaskStrategy.REJECT:
                raise FailedPrecondition(
                    f"room {room_id!r} has a collaboration running ({active.id}); its "
                    "double_text_policy is REJECT",
                    field="room_id",
                )
            if policy is MultitaskStrategy.INTERRUPT:
                await self._end_run(tenant, active, RunStatus.CANCELLED, INTERRUPTED)
        message = RoomMessage(room_id, 0, who, text, tuple(resolved))
        return await post_message(self._repository, self._log, tenant, message)

    async def history(self, tenant: str, room_id: str, size: int, token: str) -> Page[RoomMessage]:
        """One page of the room's messages, oldest first."""
        check_id(room_id, "room_id")
        limit = page_size(size)
        query = f"history={room_id}"
        after = decode_token(token, query)
        messages, more = await self._repository.messages_page(
            tenant, room_id, after.number() if after else 0, limit
        )
        return next_page(messages, more, query, lambda m: str(m.seq))

    async def stream(
        self, tenant: str, room_id: str, after_seq: int, room_run_id: str = ""
    ) -> AsyncIterator[StreamEvent]:
        """The room's events after `after_seq`, then the live ones; with
        `room_run_id`, until that collaboration's last event."""
        check_id(room_id, "room_id")
        if after_seq < 0:
            raise InvalidArgument(
                f"after_seq must not be negative (got {after_seq})", field="after_seq"
            )
        await self._repository.get(tenant, room_id)
        finished = None
        if room_run_id:
            check_id(room_run_id, "room_run_id")
            await self._repository.get_run(tenant, room_id, room_run_id)

            async def run_over() -> bool:
                run = await self._repository.get_run(tenant, room_id, room_run_id)
                return run.status.terminal

            finished = run_over
        follow = cast(
            AsyncGenerator[StreamEvent, None],
            self._log.follow(tenant, stream_name(room_id), after_seq, finished=finished),
        )
        async with aclosing(follow) as events:
            async for event in events:
                yield event
                if (
                    room_run_id
                    and event.kind == RUN_UPDATE
                    and event.data.get("id") == room_run_id
                    and RunStatus(event.data["status"]).terminal
                ):
                    return

    # Collaborations ------------------------------------------------------------

    async def run(
        self,
        tenant: str,
        room_id: str,
        task: str,
        strategy: RoomStrategy,
        max_turns: int,
        stop_condition: str,
    ) -> RoomRun:
        """Starts a collaboration in the background and returns it."""
        check_id(room_id, "room_id")
        validate_run(task, max_turns, stop_condition)
        room = await self._repository.get(tenant, room_id)
        if not speakers(room):
            raise FailedPrecondition(
                f"room {room_id!r} has no agent that takes turns (observers do not)",
                field="room_id",
            )
        if strategy is RoomStrategy.LEADER and leader_of(room) is None:
            raise FailedPrecondition(
                f"room {room_id!r} has no agent with the role leader", field="strategy"
            )
        active = await self._repository.active_run(tenant, room_id)
        if active is not None:
            raise FailedPrecondition(
                f"room {room_id!r} already has a collaboration running ({active.id})",
                field="room_id",
            )
        run = RoomRun(
            id=new_id(RUN_ID_PREFIX),
            room_id=room_id,
            task=task,
            strategy=strategy,
            max_turns=max_turns or self._default_max_turns,
            stop_condition=stop_condition,
            status=RunStatus.RUNNING,
            create_time=utcnow(),
            owner=self._runner.owner,
        )
        events = await self._repository.create_run(
            tenant, run, self._runner.lease_s, (RUN_UPDATE, run_data(run))
        )
        await self._log.publish(events)
        keys = [m.who.key for m in room.spec.members]
        opening = await post_message(
            self._repository,
            self._log,
            tenant,
            RoomMessage(
                room_id,
                0,
                Speaker.system(),
                task,
                tuple(parse_mentions(task, keys)),
                room_run_id=run.id,
            ),
        )
        self._runner.launch(Collaboration(self._deps, tenant, run, opening))
        return run

    async def get_run(self, tenant: str, room_id: str, run_id: str) -> RoomRun:
        """One collaboration, or NOT_FOUND."""
        check_id(room_id, "room_id")
        check_id(run_id, "id")
        return await self._repository.get_run(tenant, room_id, run_id)

    async def cancel_run(self, tenant: str, room_id: str, run_id: str) -> RoomRun:
        """Cancels a collaboration (unchanged if it already ended)."""
        run = await self.get_run(tenant, room_id, run_id)
        if run.status.terminal:
            return run
        await self._end_run(tenant, run, RunStatus.CANCELLED, "the collaboration was cancelled")
        return await self._repository.get_run(tenant, room_id, run_id)

    async def _end_run(self, tenant: str, run: RoomRun, status: RunStatus, error: str) -> None:
        """Ends `run` in the store (with its event), then stops it wherever it runs."""
        run.status, run.error, run.end_time = status, error, utcnow()
        events = await self._repository.update_run(tenant, run, (RUN_UPDATE, run_data(run)))
        if events:
            await self._log.publish(events)
        await self._runner.cancel_everywhere(run.id)

    async def _agent_exists(self, tenant: str, agent_id: str, prefix: str) -> None:
        field = f"{prefix}.agent_id" if prefix else "agent_id"
        check_id(agent_id, field)
        try:
            await self._agents.get(tenant, agent_id)
        except NotFound:
            raise NotFound(
                f"{field}: agent {agent_id!r} not found", field=field, resource="agent", id=agent_id
            ) from None
