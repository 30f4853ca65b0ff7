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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LAG_INTERVAL = 0.005  # seconds between ticks: the figure's resolution


class LoopLagMonitor:
    """Reports each tick's lateness in seconds to `observe` from `start()` until `stop()`.
    `clock` must be monotonic (tests may pass their own)."""

    __slots__ = ("_clock", "_due", "_handle", "_interval", "_loop", "_observe")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        observe: Callable[[float], None],
        interval: float = LAG_INTERVAL,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._loop, self._observe = loop, observe
        self._interval, self._clock = interval, clock
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._schedule(self._clock())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        self._due = now + self._interval
        self._handle = self._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        now = self._clock()
        self._observe(max(0.0, now - self._due))
        self._schedule(now)
