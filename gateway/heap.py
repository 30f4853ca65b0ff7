"""Keeping CPython's full garbage collections short while thousands of connections are held.

A full (generation 2) collection walks every tracked object with the event loop stopped, about
90 ns each here: at 10k connections of ~90 objects that is a 100 ms stall, and CPython 3.11 runs
one whenever the long-lived objects have grown by 25 % — that is, while connections arrive. An
open connection's objects live as long as it does, so the collector gains nothing by walking them.
`HeapFreezer` moves them out of its sight (`gc.freeze()`) once `step` connections have opened
since the last freeze, so a full collection only walks what came after.

The price: a frozen object is never collected, and a closed connection leaves reference cycles
(uvicorn's protocol, the `websockets` parser, asyncio futures) that only the collector frees. So
once as many connections have closed as were frozen over 2 (at least `step`), the heap is
unfrozen, collected in full and frozen again: one full-length collection per that much churn, where
CPython alone would run one per 25 % of the long-lived objects promoted (a quarter of the
connections replaced) and at every 25 % of growth. Freezing and unfreezing themselves are O(1)
(list splices). Cyclic garbage still young when a freeze happens is only freed at the next
unfreeze. Not thread-safe; called from the event loop.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class HeapFreezer:
    """Counts connections opened and closed; `tick()` freezes or unfreezes when due. `clock`
    times the full collection for the log (tests pass a fake one)."""

    __slots__ = ("_clock", "_closed", "_frozen", "_opened", "step")

    def __init__(self, step: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.step = step
        self._clock = clock
        self._opened = 0  # since the last freeze
        self._closed = 0  # since the last unfreeze
        self._frozen = 0  # connections open at the last freeze (since the last unfreeze)

    def opened(self) -> None:
        self._opened += 1

    def closed(self) -> None:
        self._closed += 1

    def tick(self, open_connections: int) -> None:
        """Call periodically, between bursts of work: collect in full after enough churn, else
        freeze after enough growth."""
        if self._frozen and self._closed >= max(self.step, self._frozen // 2):
            started = self._clock()
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            log.info(
                "collected the frozen heap",
                extra={
                    "closed": self._closed,
                    "freed": freed,
                    "ms": round((self._clock() - started) * 1000, 1),
                },
            )
            self._frozen, self._closed, self._opened = open_connections, 0, 0
        elif self._opened >= self.step:
            gc.freeze()
            self._frozen, self._opened = max(self._frozen, open_connections), 0
