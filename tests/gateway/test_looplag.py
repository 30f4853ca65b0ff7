"""`gateway.looplag.LoopLagMonitor` on a real event loop: a loop that is free reports little
lag, a callback that holds the loop reports its length, less one interval at most; a stall's
cause comes from the loop thread's own CPU and run-queue times, as the kernel reports them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.looplag import (
    ASLEEP,
    BUSY,
    OFF_CPU,
    WAITING_FOR_CPU,
    LoopLagMonitor,
    RunQueueClock,
)

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
    """Scripted clocks, no run-queue time: a tick 40 ms late with 35 ms of the thread's CPU
    since the last is a busy stall, one 40 ms late with 2 ms of CPU is off the CPU, and ticks
    within the budget (even with CPU spent) are no stall."""
    stalls = await _stalls_of(
        wall=[0.0, 0.006, 0.051, 0.096, 0.102],  # start, then each tick
        cpu=[0.0, 0.004, 0.039, 0.041, 0.047],
    )
    assert stalls == [(0.040, BUSY), (0.040, OFF_CPU)]


async def test_a_stall_off_the_cpu_is_told_waiting_for_a_cpu_from_asleep() -> None:
    """Scripted clocks with run-queue time: each tick 40 ms late is told by where most of the
    lateness went — 30 ms waiting for a CPU, 3 ms waiting (the rest asleep), 30 ms running."""
    stalls = await _stalls_of(
        wall=[0.0, 0.045, 0.090, 0.135, 0.140],
        cpu=[0.0, 0.002, 0.004, 0.034, 0.035],
        waited=[0.0, 0.030, 0.033, 0.036, 0.036],
    )
    assert stalls == [(0.040, WAITING_FOR_CPU), (0.040, ASLEEP), (0.040, BUSY)]


async def test_a_blocking_call_on_the_loop_is_a_stall_asleep() -> None:
    """A callback that sleeps 60 ms (the thread blocked in a system call: neither running nor
    waiting for a CPU) makes a stall whose cause is asleep, on the thread's real clocks."""
    loop = asyncio.get_running_loop()
    stalls: list[str] = []
    with _run_queue_clock() as waited:
        monitor = LoopLagMonitor(
            loop, lambda lag: None, INTERVAL, stalled=stalls.append, wait_clock=waited
        )
        monitor.start()
        try:
            await asyncio.sleep(0.02)
            loop.call_soon(time.sleep, 0.06)
            await asyncio.sleep(0.09)
        finally:
            monitor.stop()
    assert ASLEEP in stalls  # a loaded machine may add stalls, none of them busy
    assert BUSY not in stalls


def test_a_loop_kept_from_its_core_is_a_stall_waiting_for_a_cpu() -> None:
    """A loop on a thread of the lowest scheduling class (SCHED_IDLE), sharing its one core with
    a process that spins for 200 ms, is runnable but not running: its stall is waiting for a
    CPU, read from the kernel's run-queue delay for that thread."""
    with _run_queue_clock():
        pass  # skipped where the kernel reports no run-queue time (not Linux)
    core = min(os.sched_getaffinity(0))
    spin = (
        "import os, sys, time\n"
        f"os.sched_setaffinity(0, {{{core}}})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "end = time.monotonic() + 0.2\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
    )
    hog = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    stalls: list[tuple[float, str]] = []
    failed: list[BaseException] = []

    async def watch() -> None:
        with _run_queue_clock() as waited:
            lags: list[float] = []
            monitor = LoopLagMonitor(
                asyncio.get_running_loop(),
                lags.append,
                INTERVAL,
                stalled=lambda cause: stalls.append((lags[-1], cause)),
                wait_clock=waited,
            )
            monitor.start()
            try:
                await asyncio.sleep(0.02)
                assert hog.stdin is not None
                hog.stdin.write("spin\n")
                hog.stdin.flush()
                # 5 ms of CPU weigh like seconds for an idle-class thread: the scheduler then
                # keeps it waiting while the spinning process runs, the rest of its 200 ms.
                asyncio.get_running_loop().call_soon(_use_cpu, 0.005)
                await asyncio.sleep(0.4)
            finally:
                monitor.stop()

    def run() -> None:
        try:
            os.sched_setaffinity(0, {core})  # 0: this thread only
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            asyncio.run(watch())
        except BaseException as error:  # reported by the test's own thread
            failed.append(error)

    try:
        assert hog.stdout is not None and hog.stdout.readline() == "ready\n"
        loop_thread = threading.Thread(target=run)
        loop_thread.start()
        loop_thread.join(10)
    finally:
        hog.kill()
        hog.wait()
    assert not failed, failed
    assert stalls, "the spinning process never held up the loop"
    lateness, cause = max(stalls)
    assert lateness > 0.1 and cause == WAITING_FOR_CPU


def _use_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@contextlib.contextmanager
def _run_queue_clock() -> Iterator[RunQueueClock]:
    waited = RunQueueClock.open()
    if waited is None:
        pytest.skip("the kernel reports no run-queue time (/proc/thread-self/schedstat)")
    try:
        yield waited
    finally:
        waited.close()


async def _stalls_of(
    wall: list[float], cpu: list[float], waited: list[float] | None = None
) -> list[tuple[float, str]]:
    """The stalls (lateness, cause) a monitor reports over scripted readings of its clocks:
    the first reading is `start()`'s, each one after a tick's."""
    done = asyncio.Event()
    lags: list[float] = []
    stalls: list[tuple[float, str]] = []

    def observe(lag: float) -> None:
        lags.append(lag)
        if len(lags) == len(wall) - 1:
            done.set()

    monitor = LoopLagMonitor(
        asyncio.get_running_loop(),
        observe,
        INTERVAL,
        clock=_script(wall),
        stalled=lambda cause: stalls.append((round(lags[-1], 3), cause)),
        cpu_clock=_script(cpu),
        wait_clock=None if waited is None else _script(waited),
    )
    monitor.start()
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        monitor.stop()
    return stalls


def _script(readings: list[float]) -> Callable[[], float]:
    """A clock that reads `readings` in turn, then stays at the last (no more ticks count)."""
    left = iter(readings)
    last = [readings[0]]

    def read() -> float:
        last[0] = next(left, last[0])
        return last[0]

    return read
