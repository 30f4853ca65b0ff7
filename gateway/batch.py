"""Group commit: small Redis operations that many connections ask for at about the same time,
sent as one.

Each Redis command costs the gateway far more than the work Redis does for it: redis-py's
command path and a send and a receive system call, 0.2 to 0.3 ms of CPU per round trip on the
benchmark machine (docs/performance-notes.md). When hundreds of clients connect or leave at
once — a reconnect storm, a mass disconnect — the same command for each of them is better sent
together: one MGET for every baseline asked for, one script call for every attach.

`GroupCommit` does that without a timer: the first request of a batch starts a flush, which
yields to the event loop once (the requests of the same loop iteration join) and runs the batch;
requests arriving while it runs form the next batch, run as soon as it is done. A lone request
costs one event-loop turn more; a burst costs one round trip per batch, and the batches are as
large as the burst makes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs `run(items)` for batches of submitted items; `run` answers one result per item, in
    order. `spawn` runs the flush in the background (the owner's, which cancels it on stop)."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self._run = run
        self._spawn = spawn
        self._items: list[T] = []
        self._results: asyncio.Future[Sequence[R]] | None = None  # of `_items`' batch
        self._flushing = False

    async def submit(self, item: T) -> R:
        """The item's result once its batch ran; raises what `run` raised for the batch, or
        `CancelledError` when the flush was cancelled (the owner is stopping). Cancelling the
        caller does not cancel the batch."""
        index = len(self._items)
        self._items.append(item)
        if self._results is None:
            self._results = asyncio.get_running_loop().create_future()
        results = self._results
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush())
        return (await asyncio.shield(results))[index]

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # the requests of this event-loop iteration join the batch
            while self._results is not None:
                items, results = self._items, self._results
                self._items, self._results = [], None
                try:
                    outcome = await self._run(items)
                except asyncio.CancelledError:
                    results.cancel()
                    raise
                except Exception as exc:
                    results.set_exception(exc)
                else:
                    results.set_result(outcome)
        finally:
            self._flushing = False
            if self._results is not None:  # cancelled with a batch waiting
                self._items, pending = [], self._results
                self._results = None
                pending.cancel()
