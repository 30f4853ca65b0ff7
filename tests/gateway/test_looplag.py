"""`gateway.looplag.LoopLagMonitor` on a real event loop: a loop that is free reports little
lag, a callback that holds the loop reports its length, less one interval at most."""

from __future__ import annotations

import asyncio
import time

from gateway.looplag import LoopLagMonitor

INTERVAL = 0.005


async def test_a_blocked_loop_reports_the_stall() -> None:
    """A 60 ms callback makes the tick due during it late by at least 60 ms - 5 ms; the ticks
    go on afterwards."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    monitor = LoopLagMonitor(loop, lags.append, INTERVAL)
    monitor.start()
    try:
        await asyncio.sleep(0.03)
        ticks_before = len(lags)
        loop.call_soon(time.sleep, 0.06)  # the stall: a callback that holds the loop
        await asyncio.sleep(0.09)
    finally:
        monitor.stop()
    assert ticks_before >= 1
    assert max(lags[ticks_before:]) >= 0.06 - INTERVAL
    assert len(lags) > ticks_before + 1


async def test_stop_ends_the_ticks_and_start_is_idempotent() -> None:
    lags: list[float] = []
    monitor = LoopLagMonitor(asyncio.get_running_loop(), lags.append, INTERVAL)
    started = time.perf_counter()
    monitor.start()
    monitor.start()  # a second start does not add a second timer
    await asyncio.sleep(0.05)
    monitor.stop()
    elapsed = time.perf_counter() - started
    ticked = len(lags)
    await asyncio.sleep(0.03)
    # One chain of ticks, each about INTERVAL after the one before (a loop whose clock has
    # millisecond steps may run one up to a millisecond early); two would tick twice as often.
    assert 1 <= ticked <= 1.5 * elapsed / INTERVAL + 1
    assert len(lags) == ticked
