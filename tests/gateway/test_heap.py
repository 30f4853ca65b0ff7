"""`gateway.heap.HeapFreezer`: connection objects are frozen out of the collector's sight after
growth, and the cycles closed connections leave are freed after enough churn."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.heap import HeapFreezer


class _Node:
    """A reference cycle, as a closed connection's protocol and parser leave one."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the test process's heap back to the collector afterwards."""
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_freeze_after_growth_collect_after_churn() -> None:
    """A cycle alive at a freeze survives full collections once it is garbage, until as many
    connections closed as were frozen over 2 (at least `step`); then it is freed."""
    heap = HeapFreezer(step=2)
    node = _Node()
    ref = weakref.ref(node)
    heap.opened()
    heap.tick(1)
    assert gc.get_freeze_count() == 0  # one connection opened: under the step
    heap.opened()
    heap.tick(4)
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
def test_full_collection_is_timed_on_the_given_clock(caplog: pytest.LogCaptureFixture) -> None:
    """The logged duration of a full collection is read from the injected clock."""
    readings = iter([10.0, 10.25])
    heap = HeapFreezer(step=1, clock=lambda: next(readings))
    heap.opened()
    heap.tick(1)
    heap.closed()
    with caplog.at_level("INFO", logger="gateway.heap"):
        heap.tick(0)
    assert [r.__dict__["ms"] for r in caplog.records] == [250.0]
