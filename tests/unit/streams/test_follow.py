"""replay_then_follow against what a bus may do to live messages: drop,
repeat or reorder them, deliver ones the replay already yielded, or say
LAGGED. Whatever it does, the reader yields each stored event once, in seq
order. (The store here is a list: these tests are about the merging logic,
which tests/unit/streams/test_stream_log.py runs on real stores and buses.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from aster.server.bus.base import Subscription
from aster.server.streams import follow
from aster.server.streams.follow import replay_then_follow


@dataclass(frozen=True)
class Event:
    seq: int
    last: bool = False


class Store:
    """Events 1..count (the last one marked last); reads see 1..visible."""

    def __init__(self, count: int, *, last: bool = True) -> None:
        self.events = [Event(s, last and s == count) for s in range(1, count + 1)]
        self.visible = count
        self.reads: list[tuple[int, int]] = []

    async def read(self, after: int, limit: int) -> Sequence[Event]:
        self.reads.append((after, limit))
        return [e for e in self.events if after < e.seq <= self.visible][:limit]

    def send(self, live: Subscription, *seqs: int) -> None:
        for seq in seqs:
            live.deliver({"seq": seq, "last": self.events[seq - 1].last})


async def follow_all(
    store: Store,
    live: Subscription,
    after: int = 0,
    finished: bool | None = None,
    *,
    replayed: int = 0,
) -> list[int]:
    """The seqs yielded; once `replayed` is yielded, every event is stored."""

    async def done() -> bool:
        return bool(finished)

    seen: list[int] = []
    async for event in replay_then_follow(
        store.read,
        live,
        lambda m: Event(int(m["seq"]), bool(m["last"])),
        after,
        is_last=lambda e: e.last,
        finished=done if finished is not None else None,
        idle_check_s=0.05,
    ):
        seen.append(event.seq)
        if event.seq == replayed:
            store.visible = len(store.events)
    return seen


async def test_live_messages_dropped_repeated_reordered_or_old() -> None:
    store = Store(12)
    store.visible = 3
    live = Subscription()
    # The replay reads 1..3; the bus then delivers 2 (old), 5 (4 dropped),
    # 5 again, 4 (late), 7 (6 dropped), 12 (8..11 dropped), 9 (late).
    store.send(live, 2, 5, 5, 4, 7, 12, 9)
    assert await follow_all(store, live, replayed=3) == list(range(1, 13))


async def test_lagged_rereads_the_store() -> None:
    store = Store(8)
    store.visible = 1
    live = Subscription()
    store.send(live, 1)
    live.lag()  # the bus lost 2..8: the store has them
    assert await follow_all(store, live, replayed=1) == list(range(1, 9))


async def test_a_gap_wider_than_a_replay_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "REPLAY_BATCH", 4)
    store = Store(25)
    store.visible = 2
    live = Subscription()
    store.send(live, 25)  # 3..24 were dropped: filled in batches of 4
    assert await follow_all(store, live, replayed=2) == list(range(1, 26))
    assert max(limit for _, limit in store.reads) == 4


async def test_a_finished_stream_without_a_last_event_ends_after_the_store() -> None:
    store = Store(3, last=False)
    assert await follow_all(store, Subscription(), finished=True) == [1, 2, 3]
    # Ends while followed: the idle re-check reads the rest, then stops.
    store.visible = 1
    assert await follow_all(store, Subscription(), finished=True, replayed=1) == [1, 2, 3]


async def test_stops_at_a_last_event_wherever_it_comes_from() -> None:
    store = Store(5)
    store.events[2] = Event(3, last=True)
    assert await follow_all(store, Subscription()) == [1, 2, 3]
    store.visible = 1
    live = Subscription()
    store.send(live, 5)  # the gap fill reaches 3, the last one
    assert await follow_all(store, live, replayed=1) == [1, 2, 3]
