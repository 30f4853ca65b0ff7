"""`gateway.delivery.OrderedDelivery`: large fan-outs in chunks that yield, small frames pulled
ahead of them, and per recipient every frame exactly once in publish order. Pure scheduling:
recipients are ints, frames are strings, `offer` records what each recipient got; one socket
pair shows where a reader woken by I/O runs between the chunks, on the gateway's loop."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import defaultdict
from collections.abc import Collection, Coroutine
from typing import Any

import pytest
import uvloop

from gateway.delivery import OrderedDelivery
from shared.wire import EnvelopeMeta

META = EnvelopeMeta()


class Recipients:
    """The `offer` and `spawn` callbacks of one `OrderedDelivery`, recording what happens."""

    def __init__(self) -> None:
        self.got: dict[int, list[str]] = defaultdict(list)
        self.batches: list[int] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.offered = asyncio.Event()

    def offer(self, recipients: Collection[int], meta: EnvelopeMeta, frame: str) -> None:
        self.offered.set()
        self.batches.append(len(recipients))
        for recipient in recipients:
            self.got[recipient].append(frame)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self.tasks.append(task)
        return task

    async def finished(self) -> None:
        while any(not task.done() for task in self.tasks):
            await asyncio.gather(*self.tasks)


def delivery(chunk: int) -> tuple[OrderedDelivery[int, str], Recipients]:
    recipients = Recipients()
    return OrderedDelivery(recipients.offer, chunk, recipients.spawn), recipients


def test_a_small_frame_is_offered_before_deliver_returns() -> None:
    """With nothing queued, a frame for at most `chunk` recipients is offered synchronously."""
    ordered, seen = delivery(chunk=4)
    ordered.deliver({1, 2, 3}, META, "a")
    assert seen.got == {1: ["a"], 2: ["a"], 3: ["a"]}
    assert seen.tasks == []


async def test_a_large_frame_is_handed_out_in_chunks_with_yields_between() -> None:
    """A frame for more than `chunk` recipients is offered by a task, at most `chunk` recipients
    per batch, and other tasks run between two batches."""
    ordered, seen = delivery(chunk=10)
    ticks: list[int] = []

    async def ticker() -> None:
        while not seen.tasks or not seen.tasks[0].done():
            ticks.append(len(seen.batches))
            await asyncio.sleep(0)

    ordered.deliver(range(95), META, "b")
    assert seen.got == {}
    await asyncio.gather(ticker(), seen.finished())
    assert seen.batches == [10] * 9 + [5]
    assert all(seen.got[r] == ["b"] for r in range(95))
    # The ticker ran between every two batches: it saw 1, 2, ... 9 batches done.
    assert set(range(1, len(seen.batches))) <= set(ticks)


async def test_a_small_frame_pulls_its_recipients_ahead_of_a_running_broadcast() -> None:
    """A frame for one recipient published while a broadcast is being handed out reaches it at
    once, after the broadcast (given to it first); the chunks then skip it, and a recipient the
    broadcast was not for gets the small frame only."""
    ordered, seen = delivery(chunk=10)
    ordered.deliver(range(100), META, "broadcast")
    await seen.offered.wait()  # the first chunk, and only it: the task yields after it
    assert seen.got[5] == ["broadcast"] and 50 not in seen.got
    ordered.deliver([50, 5, 1000], META, "mine")
    assert seen.got[50] == ["broadcast", "mine"]
    assert seen.got[5] == ["broadcast", "mine"]
    assert seen.got[1000] == ["mine"]
    assert 60 not in seen.got  # the others still wait for their chunk
    await seen.finished()
    assert all(
        seen.got[r][0] == "broadcast" and seen.got[r].count("broadcast") == 1 for r in range(100)
    )


async def test_a_pulled_recipient_gets_every_queued_frame_in_order() -> None:
    """Two broadcasts queued: a small frame's recipient is given both, oldest first, then its
    own; the second broadcast, queued after, still reaches everyone once."""
    ordered, seen = delivery(chunk=10)
    ordered.deliver(range(30), META, "b1")
    ordered.deliver(range(30), META, "b2")
    ordered.deliver([7], META, "u1")
    ordered.deliver(range(30), META, "b3")
    ordered.deliver([7, 8], META, "u2")
    assert seen.got[7] == ["b1", "b2", "u1", "b3", "u2"]
    assert seen.got[8] == ["b1", "b2", "b3", "u2"]
    await seen.finished()
    assert all(seen.got[r] == ["b1", "b2", "b3"] for r in range(30) if r not in (7, 8))
    assert seen.got[7] == ["b1", "b2", "u1", "b3", "u2"]


def test_chunk_must_be_positive() -> None:
    """A chunk of 0 would never hand anything out: refused."""
    with pytest.raises(ValueError, match="at least 1"):
        OrderedDelivery(Recipients().offer, 0, Recipients().spawn)


@pytest.mark.parametrize("seed", range(20))
async def test_random_interleavings_keep_publish_order_per_recipient(seed: int) -> None:
    """Large and small frames to changing recipient sets, interleaved at random with the loop
    running the chunks: every recipient gets exactly the frames published to it while it was a
    recipient, each once, in publish order."""
    rng = random.Random(seed)
    ordered, seen = delivery(chunk=rng.choice([1, 3, 8]))
    members = set(range(40))
    expected: dict[int, list[str]] = defaultdict(list)
    for n in range(60):
        if rng.random() < 0.3:
            await asyncio.sleep(0)
        if rng.random() < 0.2:
            members.add(100 + n)  # joins: gets only what is published from now on
        if rng.random() < 0.3:
            recipients = set(members)
        else:
            recipients = set(rng.sample(sorted(members), rng.randint(1, 4)))
        frame = f"f{n}"
        for recipient in recipients:
            expected[recipient].append(frame)
        ordered.deliver(recipients, META, frame)
    await seen.finished()
    assert dict(seen.got) == dict(expected)


def test_a_reader_woken_during_a_chunk_runs_before_the_next_chunk() -> None:
    """On the gateway's loop (uvloop), data that reaches a socket while a chunk is handed out
    wakes its reader before the next chunk: another user's frame, read from the pub/sub link
    during a broadcast, waits for one chunk at most, not two (with one `sleep(0)` between chunks
    the next chunk ran first)."""

    async def scenario() -> list[str]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        events: list[str] = []

        async def read() -> None:
            await reader.readexactly(1)
            events.append("read")

        def offer(recipients: Collection[int], meta: EnvelopeMeta, frame: str) -> None:
            events.append("chunk")
            if len(events) == 1:
                theirs.send(b"x")  # arrives while the first chunk is handed out

        reading = asyncio.create_task(read())
        await asyncio.sleep(0)  # the reader waits for its byte
        seen = Recipients()
        OrderedDelivery(offer, 2, seen.spawn).deliver(range(6), META, "broadcast")
        await asyncio.gather(reading, seen.finished())
        writer.close()
        theirs.close()
        return events

    assert uvloop.run(scenario()) == ["chunk", "read", "chunk", "chunk"]
