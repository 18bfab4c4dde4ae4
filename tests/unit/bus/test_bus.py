"""The event bus contract, the same tests against the in-process bus and the
Redis one (streams for events, pub/sub for control): order, topics kept
apart, only messages published after subscribing, LAGGED for a slow
subscriber, and replicas seeing each other's messages."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aster.server.bus import base
from aster.server.bus.base import LAGGED, EventBus, Message, Subscription
from aster.server.bus.redis_bus import BROADCAST_TOPICS, RedisBus
from aster.server.runs.executor import CONTROL_TOPIC
from tests.unit.bus.conftest import MakeBus

WAIT_S = 5.0


async def take(subscription: Subscription, count: int) -> list[Message]:
    """The next `count` messages (failing on LAGGED or a stall)."""
    got: list[Message] = []
    for _ in range(count):
        item = await subscription.get(wait_s=WAIT_S)
        assert item is not None, f"stalled after {got}"
        assert not isinstance(item, base.Lagged)
        got.append(item)
    return got


async def test_subscribers_get_messages_in_order(bus: EventBus) -> None:
    async with bus.subscribe("run:a") as first, bus.subscribe("run:a") as second:
        for n in range(50):
            await bus.publish("run:a", {"n": n, "data": {"text": f"w{n}"}})
        expected = [{"n": n, "data": {"text": f"w{n}"}} for n in range(50)]
        assert await take(first, 50) == expected
        assert await take(second, 50) == expected


async def test_topics_are_kept_apart(bus: EventBus) -> None:
    topics = [f"run:{n}" for n in range(200)]
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            entering = [
                group.create_task(stack.enter_async_context(bus.subscribe(t))) for t in topics
            ]
        for n, topic in enumerate(topics):
            await bus.publish(topic, {"n": n})
        for n, task in enumerate(entering):
            assert await take(task.result(), 1) == [{"n": n}]
            assert await task.result().get(wait_s=0.01) is None


async def test_a_subscriber_sees_only_what_is_published_after_it_subscribed(
    bus: EventBus,
) -> None:
    await bus.publish("run:late", {"n": 1})
    await bus.publish("run:late", {"n": 2})
    async with bus.subscribe("run:late") as live:
        assert await live.get(wait_s=0.3) is None
        await bus.publish("run:late", {"n": 3})
        assert await take(live, 1) == [{"n": 3}]
    # A new subscription after an earlier one ended starts afresh too.
    await bus.publish("run:late", {"n": 4})
    async with bus.subscribe("run:late") as again:
        await bus.publish("run:late", {"n": 5})
        assert await take(again, 1) == [{"n": 5}]
        assert await again.get(wait_s=0.2) is None


async def test_a_slow_subscriber_is_told_it_lagged(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "QUEUE_LIMIT", 5)
    async with bus.subscribe("run:slow") as slow:
        for n in range(20):
            await bus.publish("run:slow", {"n": n})
        await asyncio.sleep(0.3)  # let a reader deliver everything
        assert await take(slow, 5) == [{"n": n} for n in range(5)]
        assert await slow.get(wait_s=WAIT_S) is LAGGED
        # After LAGGED, messages flow again.
        await bus.publish("run:slow", {"n": 99})
        assert await take(slow, 1) == [{"n": 99}]


async def test_replicas_see_each_other(make_bus: MakeBus) -> None:
    one, two = make_bus(), make_bus()
    async with two.subscribe("run:x") as on_two, two.subscribe(CONTROL_TOPIC) as control:
        await one.publish("run:x", {"seq": 1})
        await one.publish(CONTROL_TOPIC, {"cancel": "run_1"})
        assert await take(on_two, 1) == [{"seq": 1}]
        assert await take(control, 1) == [{"cancel": "run_1"}]


async def test_ping(bus: EventBus) -> None:
    assert await bus.ping()


def test_the_cancel_channels_are_broadcast_topics() -> None:
    # Cancels go over pub/sub (the wording); a renamed control topic
    # would silently land in a stream instead.
    from aster.server.rooms.runner import CONTROL_TOPIC as ROOM_CONTROL
    from aster.server.workflows.execution_worker import CONTROL_TOPIC as WORKFLOW_CONTROL

    assert {CONTROL_TOPIC, ROOM_CONTROL, WORKFLOW_CONTROL} <= BROADCAST_TOPICS
    assert RedisBus.name == "redis"
