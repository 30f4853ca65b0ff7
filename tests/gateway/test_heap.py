"""`gateway.heap.HeapFreezer`: connection objects are frozen out of the collector's sight after
growth, and the cycles closed connections leave are freed after enough churn."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator

import pytest

from gateway.heap import CollectionTimer, HeapFreezer


class _Node:
    """A reference cycle, as a closed connection's protocol and parser leave one."""

    def __init__(self) -> None:
        self.me = self
        self.held: object = None


class _Leaf:
    """An object in no cycle, freed by reference counting alone."""


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Only the test's own collections run (no automatic one between its steps); afterwards the
    test process's heap is given back to the collector."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()
    gc.unfreeze()


@pytest.fixture
def installed() -> Iterator[list[HeapFreezer]]:
    """Freezers appended to the list are installed as collection hooks, and removed after."""
    freezers: list[HeapFreezer] = []
    yield freezers
    for heap in freezers:
        heap.remove()


def _installed(freezers: list[HeapFreezer], step: int, max_walk: int) -> HeapFreezer:
    heap = HeapFreezer(step=step, max_walk=max_walk)
    heap.install()
    freezers.append(heap)
    return heap


def _collections_during(body: Callable[[], object]) -> int:
    """How many collections ran while `body` did."""
    started: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.insert(0, count)
    try:
        body()
    finally:
        gc.callbacks.remove(count)
    return len(started)


@pytest.mark.usefixtures("unfrozen")
def test_freeze_after_growth_collect_after_churn(installed: list[HeapFreezer]) -> None:
    """Nothing is frozen until a connection has opened and a collection has run. A cycle alive
    at a freeze survives full collections once it is garbage, until as many connections closed
    as were frozen over 2 (at least `step`); then, the frozen heap being within `max_walk`, it
    is freed."""
    heap = _installed(installed, step=2, max_walk=10**9)
    node = _Node()
    ref = weakref.ref(node)
    heap.tick(0)
    gc.collect(0)
    assert gc.get_freeze_count() == 0  # no connection opened
    heap.opened()
    heap.tick(4)
    assert gc.get_freeze_count() == 0  # due, but frozen only at the end of a collection
    gc.collect(0)
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert ref() is not None  # frozen: out of the collector's sight
    heap.closed()
    heap.tick(3)
    gc.collect()
    assert ref() is not None  # one close: under max(step, 4 // 2)
    heap.closed()
    heap.tick(2)
    assert ref() is None
    assert gc.get_freeze_count() > 0  # what is still alive is frozen again


@pytest.mark.usefixtures("unfrozen")
def test_freeze_walks_nothing_but_the_collection_it_follows(
    installed: list[HeapFreezer],
) -> None:
    """When due, the freeze rides on a collection that ran anyway: no collection of its own, and
    a cycle that was garbage at that collection is freed by it, not frozen."""
    heap = _installed(installed, step=1, max_walk=0)
    heap.tick(0)
    live, dead = _Node(), _Node()
    live_ref, dead_ref = weakref.ref(live), weakref.ref(dead)
    del dead
    heap.opened()
    assert _collections_during(lambda: gc.collect(0)) == 1
    assert dead_ref() is None
    assert live_ref() is not None
    frozen = gc.get_freeze_count()
    assert frozen > 0
    del live
    gc.collect()
    assert live_ref() is not None  # frozen at that collection's end


@pytest.mark.usefixtures("unfrozen")
def test_freeze_takes_unwalked_older_survivors_until_churn_frees_them(
    installed: list[HeapFreezer],
) -> None:
    """What a freeze takes unseen: a cycle that survived a young collection after which nothing
    was frozen (no connection had opened) and died before the freeze's own, younger collection
    is frozen with the survivors; the churn path's full collection frees it."""
    heap = _installed(installed, step=1, max_walk=10**9)
    heap.tick(0)
    older = _Node()
    ref = weakref.ref(older)
    gc.collect(0)  # survives into generation 1; nothing opened yet, so no freeze
    assert gc.get_freeze_count() == 0
    del older
    heap.opened()
    heap.tick(1)
    gc.collect(0)  # walks generation 0 only, then freezes every generation
    assert ref() is not None
    heap.closed()
    heap.tick(0)
    assert ref() is None


@pytest.mark.usefixtures("unfrozen")
def test_removed_freezer_freezes_nothing(installed: list[HeapFreezer]) -> None:
    """Out of `gc.callbacks`, the freezer no longer freezes, however many connections opened."""
    heap = _installed(installed, step=1, max_walk=0)
    heap.remove()
    heap.opened()
    gc.collect(0)
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("unfrozen")
def test_full_collection_is_timed_on_the_given_clock(
    caplog: pytest.LogCaptureFixture, installed: list[HeapFreezer]
) -> None:
    """The logged duration of a full collection is read from the injected clock."""
    readings = iter([10.0, 10.25])
    heap = HeapFreezer(step=1, max_walk=10**9, clock=lambda: next(readings))
    heap.install()
    installed.append(heap)
    heap.opened()
    heap.tick(1)
    gc.collect(0)
    heap.closed()
    with caplog.at_level("INFO", logger="gateway.heap"):
        heap.tick(0)
    assert [r.__dict__["ms"] for r in caplog.records] == [250.0]


@pytest.mark.usefixtures("unfrozen")
def test_no_full_walk_over_budget_unless_garbage_piles_up(installed: list[HeapFreezer]) -> None:
    """After churn, a frozen heap over `max_walk` is not walked while it holds what its open
    connections explain; once it holds over twice that (frozen cycles turned garbage), it is
    collected anyway."""
    gc.freeze()  # the test process's own objects: the application's share
    heap = _installed(installed, step=1, max_walk=0)
    heap.tick(0)
    few = [_Node() for _ in range(100)]
    heap.opened()
    heap.tick(4)
    gc.collect(0)  # frozen: 4 connections, about 25 frozen objects each
    few_ref = weakref.ref(few[0])
    del few
    heap.closed()
    heap.closed()
    heap.tick(2)
    assert few_ref() is not None  # 100 garbage objects: what 4 connections explain
    many = [_Node() for _ in range(10_000)]
    many_ref = weakref.ref(many[0])
    heap.opened()
    heap.tick(2)
    gc.collect(0)  # frozen at once: 5 times what 2 connections explain
    del many
    heap.closed()
    heap.closed()
    heap.tick(0)
    assert many_ref() is None and few_ref() is None


@pytest.mark.usefixtures("unfrozen")
def test_garbage_piling_up_is_measured_by_what_it_holds(installed: list[HeapFreezer]) -> None:
    """The heap is sized in allocated blocks, not frozen objects: one frozen cycle turned garbage
    that holds 100,000 strings (untracked by the collector, two frozen objects in all) is garbage
    piling up beside what 4 open connections explain, and the check after churn frees it."""
    gc.freeze()
    heap = _installed(installed, step=1, max_walk=0)
    heap.tick(0)
    held = [_Node() for _ in range(1000)]
    heap.opened()
    heap.tick(4)
    gc.collect(0)  # frozen and measured: 4 connections, 250 nodes each
    hoard = _Node()
    hoard.held = [str(n) for n in range(100_000)]
    hoard_ref = weakref.ref(hoard)
    heap.opened()
    heap.tick(5)
    gc.collect(0)  # frozen
    del hoard
    heap.closed()
    heap.closed()
    heap.closed()
    heap.tick(2)
    assert hoard_ref() is None
    assert held[0].me is held[0]


def test_heap_size_counts_frozen_objects_where_the_allocator_counts_no_blocks() -> None:
    """Under `PYTHONMALLOC=malloc` the interpreter counts no blocks: the heap's size is then the
    frozen object count (a walk, but not a heap that always looks empty)."""
    script = (
        "import gc, sys; from gateway.heap import heap_size; gc.freeze(); "
        "print(sys.getallocatedblocks(), heap_size(), gc.get_freeze_count())"
    )
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    blocks, size, frozen = map(int, result.stdout.split())
    assert blocks == 0
    assert size == frozen > 0


@pytest.mark.usefixtures("unfrozen")
def test_churn_frees_frozen_objects_held_by_young_cycles_without_a_full_walk(
    installed: list[HeapFreezer],
) -> None:
    """After churn, a frozen object held only by young cyclic garbage (as a closed connection's
    task is by its last exception) is freed by collecting the unfrozen heap, while the frozen
    heap over `max_walk` is not walked (a frozen cycle stays)."""
    gc.freeze()
    heap = _installed(installed, step=1, max_walk=0)
    heap.tick(0)
    leaf, frozen_cycle = _Leaf(), _Node()
    heap.opened()
    heap.tick(1)
    gc.collect(0)
    leaf_ref, cycle_ref = weakref.ref(leaf), weakref.ref(frozen_cycle)
    young = _Node()
    young.held = leaf
    del leaf, frozen_cycle, young
    heap.closed()
    heap.tick(0)
    assert leaf_ref() is None
    assert cycle_ref() is not None


@pytest.mark.usefixtures("unfrozen")
def test_skipped_churn_check_waits_for_as_much_churn_again(installed: list[HeapFreezer]) -> None:
    """Once a churn check found the frozen heap over budget and not piling up, the next ticks
    run no collection until as many connections closed again."""
    gc.freeze()
    heap = _installed(installed, step=1, max_walk=0)
    heap.tick(0)
    heap.opened()
    heap.tick(4)
    gc.collect(0)
    heap.closed()
    heap.closed()
    heap.tick(2)  # due, over budget, nothing piling up: skipped

    def churn(closes: int, open_connections: int) -> None:
        for _ in range(closes):
            heap.closed()
        heap.tick(open_connections)

    assert _collections_during(lambda: churn(1, 1)) == 0
    # the next check's collection of the unfrozen heap
    assert _collections_during(lambda: churn(1, 3)) == 1


def test_collection_timer_reports_each_collection_with_its_generation() -> None:
    """Installed, the timer reports every collection (its generation, wall and CPU clock time
    from start to stop); removed, it reports nothing more."""
    walls, cpus = iter(range(0, 1000, 5)), iter(range(0, 1000, 2))
    seen: list[tuple[int, float, float]] = []
    timer = CollectionTimer(
        lambda generation, wall, cpu: seen.append((generation, wall, cpu)),
        clock=lambda: float(next(walls)),
        cpu_clock=lambda: float(next(cpus)),
    )
    timer.install()
    try:
        gc.collect(1)
        gc.collect(2)
    finally:
        timer.remove()
    assert timer not in gc.callbacks
    assert seen[-2:] == [(1, 5.0, 2.0), (2, 5.0, 2.0)]
    reported = len(seen)
    gc.collect(0)
    assert len(seen) == reported
