"""Keeping CPython's garbage collections short while thousands of connections are held.

A collection walks every tracked object of the generations it collects with the event loop
stopped, and for each one every object it refers to: at 10k connections, whose objects are
spread over a heap too large for the CPU's caches, about 0.5 µs per object walked. An open
connection's objects live as long as it does, so the collector gains nothing by walking them
more than once. `HeapFreezer` moves them out of its sight (`gc.freeze()`) at the end of the
first collection after a connection has opened: it is a `gc.callbacks` hook, so freezing costs
no walk of its own (it used to collect everything unfrozen first, every 1000 connections: a
generation-2 collection of 1000 connections' worth, 17-65 ms of CPU at 10k). What it freezes is
that collection's survivors, which the collection has just found reachable, and the survivors
of earlier collections after which it did not freeze (no connection had opened: in-flight
requests, not connections). Garbage can only be among the latter, as a cycle that died after
surviving a collection; frozen, it is freed by the churn path below or, when it piles up, by
the walk that guards against exactly that.

A frozen object is never collected, but it is still freed by reference counting: a closed
connection leaves no reference cycle (`gateway.wsprotocol` breaks the two it had), so closing it
frees its frozen objects at once. A cycle that does become garbage while frozen stays until the
heap is unfrozen and collected in full — a walk of every live object. That is done after churn
(as many connections closed as were frozen over 2, at least `step`; first the unfrozen heap is
collected, since young cycles may be what still holds frozen objects), and only when it fits the
stall budget (a heap of at most `max_walk`, e.g. after a mass disconnect) or when the heap holds
over twice what its open connections explain (garbage is piling up: then the stall is the lesser
evil, and it is logged as a warning). Freezing and unfreezing are O(1) (list splices). Not
thread-safe: `tick()` and the counters are the event loop's; the hook runs in whichever thread's
allocation started a collection, where it only freezes and resets a count (a race loses at most
a count, delaying a freeze to the next collection).

The freezer sizes the heap in the interpreter allocator's blocks (`sys.getallocatedblocks()`:
it adds up a header per 4 KiB pool, 0.04-0.1 ms at 280-450k blocks), not in frozen objects:
`gc.get_freeze_count()` walks the frozen list, a cache miss per object (6 ms for the
application's own 65k objects, 11-15 ms at 1,000 connections), and it held the loop that long
when the freezer first measured a connection's share during a reconnect storm and at every check
after churn, most of those ending in no collection. Blocks count what a frozen object holds too
(its dict, its strings), so they grow with garbage as objects do. Under `PYTHONMALLOC=malloc`
the allocator counts no blocks; `heap_size` counts the frozen objects then (the walk; the budget
is then objects, a looser one).

`CollectionTimer` times every collection (`gc.callbacks`), whoever started it, so the pauses the
stall budget is about are measured where they happen, at the cost of two clock reads each.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Allocated blocks at which a full collection may still run on the event loop: the gateway's own
# 284k (65k tracked objects) and 70-100k more (a connection holds 69-96 blocks, 35-47 of them
# tracked objects): about 100k tracked objects to walk, 9 ms at 90 ns each, leaving room under
# the 20 ms stall budget.
MAX_WALK = 360_000


def heap_size() -> int:
    """The heap's size as the freezer measures it: the allocator's blocks in use, or where the
    allocator does not count them (`PYTHONMALLOC=malloc`), the frozen objects."""
    return sys.getallocatedblocks() or gc.get_freeze_count()


class HeapFreezer:
    """Counts connections opened and closed; as a `gc.callbacks` hook (`install()`) it freezes
    after a collection once a connection has opened, and `tick()` collects the frozen heap after
    churn. `size` measures the heap (`max_walk` is in its unit), `clock` times the full
    collection for the log (tests pass their own)."""

    __slots__ = (
        "_base",
        "_clock",
        "_closed",
        "_frozen",
        "_open",
        "_opened",
        "_per_connection",
        "_size",
        "max_walk",
        "step",
    )

    def __init__(
        self,
        step: int,
        max_walk: int = MAX_WALK,
        size: Callable[[], int] = heap_size,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.step = step
        self.max_walk = max_walk
        self._size = size
        self._clock = clock
        self._opened = 0  # since the last freeze
        self._closed = 0  # since the last full collection
        self._open = 0  # as the last tick was told, plus opened and closed since
        self._frozen = 0  # connections open at the last freeze (since the last full collection)
        self._base: int | None = None  # the heap before the first freeze: the application's own
        self._per_connection = 0.0  # the heap's growth per open connection after a collection

    def opened(self) -> None:
        self._opened += 1
        self._open += 1

    def closed(self) -> None:
        self._closed += 1
        self._open -= 1

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """After a collection, once a connection has opened since the last freeze: freeze. The
        collection has just walked what it collected and freed its garbage, so freezing walks
        nothing more, and every connection's objects are walked by one young collection only."""
        if phase == "stop" and self._opened:
            self._take_base()
            gc.freeze()
            self._frozen, self._opened = max(self._frozen, self._open), 0
            if not self._per_connection and self._open >= self.step:
                self._measure(self._open)

    def tick(self, open_connections: int) -> None:
        """Call periodically, between bursts of work: collect in full after enough churn when
        affordable (or when garbage piles up). `open_connections`: those whose objects are
        alive — open, or closed and not yet counted by `closed()`."""
        self._take_base()
        self._open = open_connections
        if self._frozen and self._closed >= max(self.step, self._frozen // 2):
            # Young cycles (a closed connection's last exceptions and timeouts) may be all that
            # holds frozen objects: freeing them first lets reference counting free those.
            gc.collect()
            size = self._size()
            if size <= self.max_walk or self._piling_up(size, open_connections):
                self._collect_all(size, open_connections)
                return
            self._closed = 0  # look again after as much churn, not at every tick

    def _take_base(self) -> None:
        """The first tick or freeze takes the heap's size then as the application's own share."""
        if self._base is None:
            self._base = self._size()

    def _piling_up(self, size: int, open_connections: int) -> bool:
        """Whether the heap holds over twice what its open connections explain."""
        base = self._base or 0
        return size - base > 2 * self._per_connection * (open_connections + self.step)

    def _measure(self, open_connections: int) -> None:
        if open_connections:
            base = self._base or 0
            self._per_connection = (self._size() - base) / open_connections

    def _collect_all(self, size: int, open_connections: int) -> None:
        started = self._clock()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        ms = round((self._clock() - started) * 1000, 1)
        level = logging.INFO if size <= self.max_walk else logging.WARNING
        extra = {"closed": self._closed, "heap": size, "freed": freed, "ms": ms}
        log.log(level, "collected the frozen heap", extra=extra)
        self._frozen, self._closed, self._opened = open_connections, 0, 0
        self._measure(open_connections)


class CollectionTimer:
    """Reports each garbage collection's generation, wall time and CPU time to `observe`.
    `install()` adds it to `gc.callbacks`, `remove()` takes it out; `clock` and `cpu_clock` are
    the timers (tests pass fake ones). Wall time is the stall; CPU time tells a collection that
    was long from one whose core was taken by another process meanwhile."""

    __slots__ = ("_clock", "_cpu_clock", "_observe", "_started")

    def __init__(
        self,
        observe: Callable[[int, float, float], None],
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._observe = observe
        self._clock, self._cpu_clock = clock, cpu_clock
        self._started: tuple[float, float] | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = (self._clock(), self._cpu_clock())
        elif self._started is not None:
            wall, cpu = self._started
            self._observe(info["generation"], self._clock() - wall, self._cpu_clock() - cpu)
            self._started = None

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
