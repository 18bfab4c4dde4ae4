"""A subscription's wait honours cancellation even when a message arrives in
the same instant (asyncio.wait_for in Python 3.11 returned the message and
swallowed the cancel, so a stopped run or execution kept going)."""

from __future__ import annotations

import asyncio

import pytest

from aster.server.bus.base import Subscription


async def test_a_cancel_that_arrives_with_a_message_still_cancels() -> None:
    subscription = Subscription()
    waiting = asyncio.create_task(subscription.get(wait_s=5))
    await asyncio.sleep(0)
    subscription.deliver({"n": 1})
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The message was not consumed by the cancelled wait.
    assert await subscription.get(wait_s=0.1) == {"n": 1}


async def test_a_wait_times_out_with_none_and_then_still_receives() -> None:
    subscription = Subscription()
    assert await subscription.get(wait_s=0.01) is None
    subscription.deliver({"n": 2})
    assert await subscription.get(wait_s=1) == {"n": 2}
