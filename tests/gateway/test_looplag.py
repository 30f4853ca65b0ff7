"""`gateway.looplag.LoopLagMonitor` on a real event loop: a loop that is free reports little
lag, a callback that holds the loop reports its length, less one interval at most."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

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


async def test_a_stall_the_loop_ran_through_is_busy_one_it_did_not_is_off_the_cpu() -> None:
    """Scripted clocks: a tick 40 ms late with 35 ms of the thread's CPU since the last is a
    busy stall, one 40 ms late with 2 ms of CPU is off the CPU, and ticks within the budget
    (even with CPU spent) are no stall."""
    wall = _script([0.0, 0.006, 0.051, 0.096, 0.102])  # start, then each tick
    cpu = _script([0.0, 0.004, 0.039, 0.041, 0.047])
    done = asyncio.Event()
    lags: list[float] = []
    stalls: list[bool] = []

    def observe(lag: float) -> None:
        lags.append(lag)
        if len(lags) == 4:
            done.set()

    monitor = LoopLagMonitor(
        asyncio.get_running_loop(),
        observe,
        INTERVAL,
        clock=wall,
        stalled=stalls.append,
        cpu_clock=cpu,
    )
    monitor.start()
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        monitor.stop()
    assert [round(lag, 3) for lag in lags] == [0.001, 0.040, 0.040, 0.001]
    assert stalls == [True, False]


async def test_a_blocking_call_on_the_loop_is_a_stall_off_the_cpu() -> None:
    """A callback that sleeps 60 ms (the thread blocked in a system call, not running) makes a
    stall whose cause is off the CPU, measured on the thread's real CPU clock."""
    loop = asyncio.get_running_loop()
    stalls: list[bool] = []
    monitor = LoopLagMonitor(loop, lambda lag: None, INTERVAL, stalled=stalls.append)
    monitor.start()
    try:
        await asyncio.sleep(0.02)
        loop.call_soon(time.sleep, 0.06)
        await asyncio.sleep(0.09)
    finally:
        monitor.stop()
    assert stalls and not any(stalls)  # a loaded machine may add stalls, none of them busy


def _script(readings: list[float]) -> Callable[[], float]:
    """A clock that reads `readings` in turn, then stays at the last (no more ticks count)."""
    left = iter(readings)
    last = [readings[0]]

    def read() -> float:
        last[0] = next(left, last[0])
        return last[0]

    return read
