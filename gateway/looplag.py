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

A tick later than `STALL` is a stall, and its cause is told from the CPU time the loop's thread
used since the tick before: *busy* when it ran for at least half the lateness (a long turn of
the gateway's own code, which a profile of the loop finds), *off the CPU* otherwise (a blocking
call on the loop, CPU throttling, another process on the core, a paused machine: nothing a
profile of the loop finds). Same lateness, opposite remedies; the two look alike from outside.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LAG_INTERVAL = 0.005  # seconds between ticks: the figure's resolution
STALL = 0.020  # seconds late: the stall budget of docs/performance.md


class LoopLagMonitor:
    """Reports each tick's lateness in seconds to `observe` from `start()` until `stop()`, and
    each stall's cause to `stalled` (True: busy, False: off the CPU). `clock` must be monotonic
    and `cpu_clock` the CPU time of the loop's thread (tests may pass their own)."""

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
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        observe: Callable[[float], None],
        interval: float = LAG_INTERVAL,
        clock: Callable[[], float] = time.perf_counter,
        stalled: Callable[[bool], None] | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._loop, self._observe, self._stalled = loop, observe, stalled
        self._interval, self._clock, self._cpu_clock = interval, clock, cpu_clock
        self._due = self._cpu = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._cpu = self._cpu_clock()
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
        lateness = max(0.0, now - self._due)
        self._observe(lateness)
        if lateness > STALL and self._stalled is not None:
            self._stalled(cpu - self._cpu >= lateness / 2)
        self._cpu = cpu
        self._schedule(now)
