"""Ordered delivery of published frames to this instance's connections: small fan-outs at once,
large ones in chunks that yield to the event loop, and never two frames out of publish order on
any one connection.

A frame for at most `chunk` recipients is handed to `offer` synchronously. A larger one (a
broadcast to 10k connections) is queued, with a snapshot of its recipients, and handed out by one
task `chunk` recipients at a time, yielding to the loop in between, so the loop is never held for
a whole broadcast. What comes in meanwhile:

- a large frame queues behind the ones already waiting (entries are handed out in publish order);
- a small frame is not held back: each of its recipients first gets, at once, every queued frame
  it has not been handed yet ("pulled forward"), then the small frame — so a user's notification
  published during a broadcast is delayed by one chunk at most, not by the whole broadcast, and
  still arrives after it. The chunks skip the recipients pulled forward.

Pure scheduling: no I/O, no knowledge of connections beyond their being hashable; what a
recipient does with a frame (seq filter, socket write) is the `offer` callback's business.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from shared.wire import EnvelopeMeta

M = TypeVar("M", bound=Hashable)
F = TypeVar("F")

# offer(recipients, routing metadata, frame): hand the frame to each recipient, never waiting.
Offer = Callable[[Collection[M], EnvelopeMeta, F], None]
Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


class _Entry(Generic[M, F]):
    """A queued frame and how far the chunks got through its recipients."""

    __slots__ = ("frame", "index", "meta", "number", "position", "recipients")

    def __init__(
        self, number: int, recipients: tuple[M, ...], meta: EnvelopeMeta, frame: F
    ) -> None:
        self.number = number
        self.recipients = recipients
        self.meta = meta
        self.frame = frame
        self.position = 0  # recipients[:position] were handed out by the chunks
        # recipient -> its position, built on the first pull-forward that asks about this entry
        self.index: dict[M, int] | None = None

    def waiting_for(self, recipient: M) -> bool:
        """Whether `recipient` is among the recipients the chunks have not reached yet."""
        if self.index is None:
            self.index = dict(zip(self.recipients, range(len(self.recipients)), strict=True))
        position = self.index.get(recipient)
        return position is not None and position >= self.position


class OrderedDelivery(Generic[M, F]):
    """Per recipient, frames are offered in the order `deliver` was called; each frame is
    offered once to each of the recipients it was delivered to (unless the task handing out the
    queue is cancelled: shutdown). `deliver` never waits."""

    def __init__(self, offer: Offer[M, F], chunk: int, spawn: Spawn) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self._offer = offer
        self._chunk = chunk
        self._spawn = spawn
        self._queue: deque[_Entry[M, F]] = deque()  # the head is the one being handed out
        self._numbers = itertools.count(1)
        # Recipients pulled forward: the number of the newest entry each was handed. Numbers
        # only grow, so an entry queued later is never mistaken for one already handed.
        self._ahead: dict[M, int] = {}
        self._task: asyncio.Task[None] | None = None

    def deliver(self, recipients: Collection[M], meta: EnvelopeMeta, frame: F) -> None:
        """Offer `frame` to `recipients` (a live collection may be passed: a large one is
        copied, a small one is offered before this returns)."""
        if len(recipients) > self._chunk:
            self._queue.append(_Entry(next(self._numbers), tuple(recipients), meta, frame))
            if self._task is None:
                self._task = self._spawn(self._drain())
            return
        if self._queue:
            self._pull_forward(recipients)
        self._offer(recipients, meta, frame)

    def _pull_forward(self, recipients: Collection[M]) -> None:
        newest = self._queue[-1].number
        ahead = self._ahead
        for recipient in recipients:
            handed = ahead.get(recipient, 0)
            if handed >= newest:
                continue
            for entry in self._queue:
                if entry.number > handed and entry.waiting_for(recipient):
                    self._offer((recipient,), entry.meta, entry.frame)
            ahead[recipient] = newest

    async def _drain(self) -> None:
        """Hand the queue out in order, yielding to the loop after every `chunk` recipients
        (an entry counts as one more, so a run of entries whose recipients all left still
        yields). Ends once the queue is empty."""
        queue, ahead, chunk = self._queue, self._ahead, self._chunk
        budget = chunk
        try:
            while queue:
                entry = queue[0]
                recipients, count = entry.recipients, len(entry.recipients)
                while entry.position < count:
                    if budget <= 0:
                        await _after_io()
                        budget = chunk
                    start = entry.position
                    end = entry.position = min(count, start + budget)
                    batch = recipients[start:end]
                    if ahead:
                        number = entry.number
                        batch = tuple(r for r in batch if ahead.get(r, 0) < number)
                    self._offer(batch, entry.meta, entry.frame)
                    budget -= end - start
                queue.popleft()
                if not queue:
                    ahead.clear()  # nothing queued is older than what comes next
                budget -= 1
        finally:
            self._task = None


async def _after_io() -> None:
    """Yield to the loop until the tasks woken by its next poll for I/O have had their turn.

    One `sleep(0)` is not enough: this task's resumption is queued before that poll, so it runs
    ahead of the wake-ups the poll queues, and the pub/sub reader, woken by another user's frame
    that arrived during one chunk, would run only after the next chunk (measured: that frame
    waited 5-10 ms behind a broadcast instead of 0-5). Resuming from a second hop, queued behind
    those wake-ups, lets them run first. That holds on uvloop (the gateway's loop), which runs a
    stream's data callback within its poll; asyncio's own loop queues one more hop, there the
    reader still waits for the next chunk."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
