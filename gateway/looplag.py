"""The event loop's lag, measured where it happens: how late a repeating timer runs.

Every callback the loop runs (a handshake's turn, a broadcast's chunk, a collection started by
an allocation) holds up everything else ready in that turn; a client sees it as a late frame or
a late pong. Measured from a client, that delay also holds the network and the client's own
scheduling (on a shared core, a busy load generator's); measured here, it is the gateway's
alone. `LoopLagMonitor` asks the loop for a callback every `interval` and reports how late it
ran. A stall of D seconds shows as a lateness between D - interval and D (it may begin just
after a tick): the figure is a lower bound, `interval` below the stall at worst. Node's
`monitorEventLoopDelay` measures the same way; at the default 5 ms the timer costs about 200
callbacks a second, a few microseconds each.

A tick later than `STALL` is a stall, and its cause is told from where the loop's thread spent
the lateness, read from the kernel at each tick: *busy*, running (a long turn of the gateway's
own code, which a profile of the loop finds); *waiting for a CPU*, runnable but not running (the
scheduler's run-queue delay: another process on the core, a container's CPU limit throttling
it); *asleep*, neither (a blocking call on the loop, or a paused machine). Same lateness, three
remedies; they look alike from outside. Where the kernel does not report run-queue time (not
Linux), a stall is busy or *off the CPU*.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

LAG_INTERVAL = 0.005  # seconds between ticks: the figure's resolution
STALL = 0.020  # seconds late: the stall budget of docs/performance.md

BUSY, WAITING_FOR_CPU, ASLEEP, OFF_CPU = "busy", "waiting_for_cpu", "asleep", "off_cpu"
STALL_CAUSES = (BUSY, WAITING_FOR_CPU, ASLEEP)  # what a Linux gateway reports

_SCHEDSTAT = "/proc/thread-self/schedstat"  # run time, run-queue delay (ns), time slices


class RunQueueClock:
    """The time the thread that opened it spent runnable but waiting for a CPU, in seconds: the
    scheduler's run-queue delay, which includes a CPU limit's throttling. One `pread` of an open
    file per call (about a microsecond). `open()` is None where the kernel does not report it
    (not Linux, or built without `CONFIG_SCHED_INFO`)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls) -> RunQueueClock | None:
        try:
            clock = cls(os.open(_SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return None
        try:
            clock()
        except (OSError, ValueError, IndexError):
            clock.close()
            return None
        return clock

    def __call__(self) -> float:
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def close(self) -> None:
        os.close(self._fd)


class LoopLagMonitor:
    """Reports each tick's lateness in seconds to `observe` from `start()` until `stop()`, and
    each stall's cause to `stalled` (one of `STALL_CAUSES`, or `OFF_CPU` without `wait_clock`).
    `clock` must be monotonic, `cpu_clock` the CPU time of the loop's thread and `wait_clock`
    its run-queue delay (`RunQueueClock`; tests may pass their own)."""

    __slots__ = (
        "_clock",
        "_cpu",
        "_cpu_clock",
        "_due",
        "_handle",
        "_interval",
        "_loop",
        "_observe",
        "_stalled",
        "_wait_clock",
        "_waited",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        observe: Callable[[float], None],
        interval: float = LAG_INTERVAL,
        clock: Callable[[], float] = time.perf_counter,
        stalled: Callable[[str], None] | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
        wait_clock: Callable[[], float] | None = None,
    ) -> None:
        self._loop, self._observe, self._stalled = loop, observe, stalled
        self._interval, self._clock, self._cpu_clock = interval, clock, cpu_clock
        self._wait_clock = wait_clock
        self._due = self._cpu = self._waited = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._cpu = self._cpu_clock()
            self._waited = self._wait_clock() if self._wait_clock is not None else 0.0
            self._schedule(self._clock())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._due = now + self._interval
        self._handle = self._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        now, cpu = self._clock(), self._cpu_clock()
        waited = self._wait_clock() if self._wait_clock is not None else 0.0
        lateness = max(0.0, now - self._due)
        self._observe(lateness)
        if lateness > STALL and self._stalled is not None:
            self._stalled(self._cause(lateness, cpu - self._cpu, waited - self._waited))
        self._cpu, self._waited = cpu, waited
        self._schedule(now)

    def _cause(self, lateness: float, ran: float, waited: float) -> str:
        """Where most of the lateness went: running, waiting for a CPU, or neither."""
        rest = lateness - ran - waited
        if ran >= max(waited, rest):
            return BUSY
        if self._wait_clock is None:
            return OFF_CPU
        return WAITING_FOR_CPU if waited >= rest else ASLEEP
