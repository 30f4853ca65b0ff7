"""`GroupCommit`: requests made together run as one batch, each caller gets its own result, a
batch's failure reaches its callers only, and nothing hangs when the flush is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.batch import GroupCommit


class Recorder:
    """A `run` that records its batches and, when `gate` is set, waits for it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail_next = False

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("redis down")
        return [item * 10 for item in items]


@pytest.fixture
def tasks() -> set[asyncio.Task[None]]:
    return set()


def _spawner(tasks: set[asyncio.Task[None]]) -> Any:
    def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
        tasks.add(asyncio.create_task(coroutine))

    return spawn


async def test_requests_made_together_are_one_batch(tasks: set[asyncio.Task[None]]) -> None:
    """Requests of one event-loop iteration run as one batch, each caller getting its own
    result; requests made while it runs form the next batch."""
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    commit: GroupCommit[int, int] = GroupCommit(recorder.run, _spawner(tasks))
    first = [asyncio.create_task(commit.submit(n)) for n in range(3)]
    await recorder.started.wait()
    second = [asyncio.create_task(commit.submit(n)) for n in range(3, 5)]
    await asyncio.sleep(0)  # the second requests are queued behind the running batch
    recorder.gate.set()
    assert await asyncio.gather(*first, *second) == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1, 2], [3, 4]]


async def test_a_failed_batch_fails_only_its_callers(tasks: set[asyncio.Task[None]]) -> None:
    """The exception of a batch is raised to each of its callers; the next batch runs."""
    recorder = Recorder()
    recorder.fail_next = True
    commit: GroupCommit[int, int] = GroupCommit(recorder.run, _spawner(tasks))
    outcomes = await asyncio.gather(commit.submit(1), commit.submit(2), return_exceptions=True)
    assert [type(o) for o in outcomes] == [OSError, OSError]
    assert await commit.submit(3) == 30


async def test_a_cancelled_caller_does_not_cancel_the_batch(
    tasks: set[asyncio.Task[None]],
) -> None:
    """A caller that gives up leaves the other callers of its batch their results."""
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    commit: GroupCommit[int, int] = GroupCommit(recorder.run, _spawner(tasks))
    leaving = asyncio.create_task(commit.submit(1))
    staying = asyncio.create_task(commit.submit(2))
    await recorder.started.wait()
    leaving.cancel()
    recorder.gate.set()
    assert await staying == 20
    assert leaving.cancelled()


async def test_a_cancelled_flush_releases_every_caller(tasks: set[asyncio.Task[None]]) -> None:
    """When the owner cancels the flush (stopping), the running batch's callers and those
    waiting for the next batch get `CancelledError` instead of waiting forever."""
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    commit: GroupCommit[int, int] = GroupCommit(recorder.run, _spawner(tasks))
    running = asyncio.create_task(commit.submit(1))
    await recorder.started.wait()
    waiting = asyncio.create_task(commit.submit(2))
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(running, waiting, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
