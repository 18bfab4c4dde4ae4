"""Replay-then-follow: every event after a cursor, stored ones first, then
live ones from the bus, with no gap and no duplicate. Shared by run streams
and the durable streams of rooms and workflow executions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from aster.server.bus.base import Lagged, Message, Subscription

REPLAY_BATCH = 500


class Sequenced(Protocol):
    """An event with a position in its stream."""

    @property
    def seq(self) -> int:
        """1, 2, 3, ... with no gap."""
        ...


E = TypeVar("E", bound=Sequenced)

# (after_seq, limit) -> up to `limit` stored events with seq > after_seq.
ReadStored = Callable[[int, int], Awaitable[Sequence[E]]]


@dataclass
class _Position:
    """How far a reader got: the last seq yielded, and whether that event
    was the stream's last."""

    seq: int
    ended: bool = False


async def replay_then_follow(
    read: ReadStored[E],
    live: Subscription,
    decode: Callable[[Message], E],
    after_seq: int,
    *,
    is_last: Callable[[E], bool],
    finished: Callable[[], Awaitable[bool]] | None,
    idle_check_s: float,
) -> AsyncIterator[E]:
    """Yields every event with seq > `after_seq` until one `is_last`, or
    until `finished()` says the stream ended and nothing more is stored.

    `live` must be subscribed before this is called, so that nothing
    published during the replay is missed. A message that skips ahead (one
    published before the subscription, or dropped by the bus) is filled from
    the store; when the bus is quiet for `idle_check_s` or lagged, the store
    is re-read."""
    at = _Position(after_seq)
    async for event in _stored(read, at, is_last):
        yield event
    if at.ended:
        return
    if finished is not None and await finished():
        # Joined after the end: whatever the replay missed is stored by now
        # (checked before this last read), and nothing will follow.
        async for event in _stored(read, at, is_last):
            yield event
        return
    while True:
        message = await live.get(wait_s=idle_check_s)
        if message is None or isinstance(message, Lagged):
            # Whether the stream had ended is read before its events: a
            # stream ending in between still has its last event read.
            ended = message is None and finished is not None and await finished()
            before = at.seq
            async for event in _stored(read, at, is_last):
                yield event
            if at.ended or (ended and at.seq == before):
                return
            continue
        event = decode(message)
        if event.seq <= at.seq:
            continue
        if event.seq > at.seq + 1:
            async for missing in _stored(read, at, is_last, until=event.seq - 1):
                yield missing
            if at.ended:
                return
            if event.seq != at.seq + 1:
                continue
        yield event
        at.seq = event.seq
        if is_last(event):
            return


async def _stored(
    read: ReadStored[E], at: _Position, is_last: Callable[[E], bool], until: int | None = None
) -> AsyncIterator[E]:
    """The stored events after `at.seq` (up to seq `until`, if given),
    batch by batch, advancing `at`; stops after one that `is_last`."""
    while until is None or at.seq < until:
        want = REPLAY_BATCH if until is None else min(REPLAY_BATCH, until - at.seq)
        batch = await read(at.seq, want)
        for event in batch:
            yield event
            at.seq = event.seq
            if is_last(event):
                at.ended = True
                return
        if len(batch) < want:
            return
