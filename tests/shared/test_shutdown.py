"""`shared.shutdown.bounded`: steps in order, failures logged and passed over, and an overrun
named — the step and where every pending task waits — instead of a process that never exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from shared import shutdown


async def test_steps_run_in_order_and_a_failing_one_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def broken() -> None:
        ran.append("broken")
        raise ConnectionError("redis went away")

    async def last() -> None:
        ran.append("last")

    with caplog.at_level(logging.WARNING, logger="shared.shutdown"):
        finished = await shutdown.bounded([("a", first), ("b", broken), ("c", last)], timeout=5)
    assert finished
    assert ran == ["first", "broken", "last"]
    (record,) = caplog.records
    assert record.getMessage() == "shutdown step failed"
    assert record.__dict__["step"] == "b"
    assert "redis went away" in record.__dict__["error"]


async def test_a_step_that_never_returns_is_named_with_where_it_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()

    async def wait_for_the_peer() -> None:
        await never.wait()

    async def drain() -> None:
        await wait_for_the_peer()

    async def background() -> None:
        await wait_for_the_peer()

    stuck = asyncio.create_task(background())
    after: list[str] = []

    async def later() -> None:
        after.append("later")

    with caplog.at_level(logging.WARNING, logger="shared.shutdown"):
        finished = await shutdown.bounded([("connections", drain), ("redis", later)], timeout=0.05)
    assert not finished
    assert after == []  # given up: the process may exit
    (record,) = caplog.records
    assert record.getMessage() == "shutdown overran"
    assert record.__dict__["step"] == "connections"
    stopping = record.__dict__["stopping"]
    assert "drain" in stopping and "wait_for_the_peer" in stopping and "Event.wait" in stopping
    assert stopping.index("drain") < stopping.index("wait_for_the_peer")
    pending = record.__dict__["pending"]
    assert any("background" in chain and "wait_for_the_peer" in chain for chain in pending)
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck
