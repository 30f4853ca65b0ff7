"""The gateway's shared reply reader: one blocking `XREAD` per lane over many answers' reply
streams, each stream's entries handed to the reader that subscribed to it.

Before, every SSE or WebSocket chat reader held its own blocking `XREAD` on a pooled connection.
The agent worker writes all answers' events in one pipeline, so Redis woke all of them at once
and the gateway served them one after another: a reply, a parse and the next `XREAD` each, about
5 ms of queueing per token at 200 streams (docs/performance-notes.md). Here a lane (one task, one
command at a time on the pool) reads up to `LANE_KEYS` streams in one `XREAD`; each subscription
gets its entries through a future, in order, one delivered read at a time.

A subscription may carry a sink: a function that takes a read's entries to the client at once
(the SSE response's socket, gateway.chat). While its reader waits with everything before written,
the lane hands the entries to the sink instead of waking the reader's task — one task wake-up
and four coroutine layers fewer per stream per read; a sink that cannot take them (the socket is
backed up, the answer ends) returns False and the reader gets them as before, in order. The
lane hands a read's entries over once its next `XREAD` is sent, so Redis serves that read while
the sinks write; only the first `SINK_STREAMS` streams of a read go to sinks, which bounds the
one step of the loop they take.

Each read is the blocking `XREAD` and, pipelined behind it, the same `XREAD` without `BLOCK`
(`read_commands`): Redis answers a blocked read with the one stream whose write woke it, and runs
the follow-up once the rest of that writer's pipeline is in, so a worker's burst to 50 answers
arrives in one round trip instead of two (docs/decisions.md, "The lane's follow-up read").

A subscription that joins while its lane is blocked must not wait for the block to time out: each
lane's `XREAD` also reads its own wake-up stream (`keys.gateway_replies_wake`), and a join
appends an entry to it (at most one per blocked read). A reader that falls behind keeps at most
`PENDING_READS` reads buffered; past that its key leaves the shared read until it catches up, so
a slow client never makes the lane buffer its whole answer.

The lane sends its `XREAD` packed by itself (`_Lane._xread`): redis-py packs every argument of
every command anew, about 440 µs for a read of 200 streams (the lane's own CPU per read, paid
before the read goes out), where each subscription here keeps its key and last id packed and a
read joins them.

Redis Cluster: the keys of one `XREAD` must share a hash slot, and reply streams spread over all
of them, so on a cluster the gateway does not build this reader and each chat reader keeps its
own `XREAD` (`gateway.chat.read_batches`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import redis.asyncio as redis
from redis.typing import EncodableT, FieldT

from shared import keys
from shared.backoff import Backoff
from shared.redis_client import RedisClient

log = logging.getLogger(__name__)

Entries = list[tuple[bytes, dict[bytes, bytes]]]
# Takes a read's entries to the reader's client itself (True), or leaves them to the reader.
Sink = Callable[[Entries], bool]

LANE_KEYS = 512  # reply streams per lane (its XREAD command grows with them)
READ_COUNT = 100  # entries per stream per read, as each reader's own XREAD read them
BLOCK_MS = 1000  # below the Redis client's socket timeout
PENDING_READS = 16  # reads buffered for a reader before its key leaves the shared read
SINK_STREAMS = 100  # streams of one read written by their sinks (each a socket write, ~35 µs)
WAKE_MAXLEN = 16  # a wake-up stream only needs its newest entry
WAKE_TTL = 3600  # a stopped gateway's wake-up streams go away by themselves
_WAKE_FIELDS: dict[FieldT, EncodableT] = {b"w": b""}


class Subscription:
    """One reader's view of one reply stream, from entry id `after` on. Not shared: one task
    calls `next` at a time. Obtained from `ReplyReader.subscribe`, which removes it on exit.

    With a `sink`, the entries of a read that arrives while the reader waits in `next` go to
    the sink first; what it takes the reader never sees (`sunk_at` says when it last took
    some, so the reader does not count that time as silence)."""

    __slots__ = (
        "_batches", "_deadline", "_fires", "_lane", "_timer", "_waiter",
        "key", "last", "packed", "packed_key", "paused", "sink", "sunk_at",
    )  # fmt: skip

    def __init__(self, lane: _Lane, key: bytes, after: str, sink: Sink | None = None) -> None:
        self.key, self.last, self.paused = key, after.encode(), False
        self.sink, self.sunk_at = sink, 0.0
        # `key` and `last` as the lane's XREAD sends them
        self.packed_key, self.packed = _bulk(key), _bulk(self.last)
        self._lane = lane
        self._batches: collections.deque[Entries] = collections.deque()
        self._waiter: asyncio.Future[Entries] | None = None
        # One timer, left armed between waits (a reader waits once per read it is given, and a
        # timer made and cancelled per wait cost more than the rest of the wait): it fires by
        # the loop's clock at `_fires`, then ends the wait or re-arms for the newer `_deadline`.
        self._deadline = self._fires = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def next(self, timeout: float) -> Entries:
        """The entries one shared read found for this stream, in stream order; `[]` once
        `timeout` seconds (by `time.monotonic`) passed without any. Raises the lane's
        `redis.RedisError`/`OSError` while its reads fail (Redis restarting or unreachable);
        what was read before is returned first. Cancelling it is safe: nothing read is lost,
        the next call returns it."""
        if self._batches:
            batch = self._batches.popleft()
            if self.paused and not self._batches:
                self.paused = False
                self._lane.changed()
            return batch
        if self._lane.error is not None:
            raise self._lane.error
        loop = asyncio.get_running_loop()
        deadline = self._deadline = time.monotonic() + timeout
        entries: Entries = []
        # uvloop's timers count whole milliseconds of its cached clock and may fire a little
        # before `timeout` has passed by time.monotonic(), by which callers measure silence.
        while not entries and (left := deadline - time.monotonic()) > 0:
            waiter: asyncio.Future[Entries] = loop.create_future()
            if self._timer is None or self._fires > loop.time() + left:
                self._arm(loop, left)
            self._waiter = waiter
            try:
                entries = await waiter
            finally:
                self._waiter = None
        return entries

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._fires = loop.time() + delay
        self._timer = loop.call_at(self._fires, self._expire)

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait runs: the next one arms a timer again
        left = self._deadline - time.monotonic()
        if left > 0:
            self._arm(asyncio.get_running_loop(), left)
        else:
            waiter.set_result([])

    def close(self) -> None:
        """Drop the timer (the subscription has ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def advance(self, entries: Entries) -> None:
        """The next read goes on after `entries`, which are delivered once it is sent: if they
        could fill the buffer, the key already leaves that read."""
        self.last = entries[-1][0]
        self.packed = _bulk(self.last)
        if len(self._batches) + 1 >= PENDING_READS:
            self.paused = True

    def deliver(self, entries: Entries, sink: bool = True) -> None:
        """Hand `entries` over: to the sink (unless `sink` is False), else to the reader."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # The reader waits, so everything it was given before is written: the sink's
            # entries come after it. (A reader not waiting gets them queued, in order.)
            if sink and self.sink is not None and self._sunk(self.sink, entries):
                return
            waiter.set_result(entries)
            return
        self._batches.append(entries)
        self.paused = len(self._batches) >= PENDING_READS

    def _sunk(self, sink: Sink, entries: Entries) -> bool:
        try:
            taken = sink(entries)
        except Exception:
            # Not the lane's failure: the reader meets the same entries on its own path, and
            # whatever the sink tripped on fails that one request there.
            return False
        if taken:
            self.sunk_at = time.monotonic()
        return taken

    def fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


def _bulk(value: bytes) -> bytes:
    """`value` as a RESP bulk string (one argument of a command)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


# XREAD COUNT <READ_COUNT> BLOCK <BLOCK_MS> STREAMS, after the argument count.
_XREAD_HEAD = b"".join(
    _bulk(arg) for arg in (b"XREAD", b"COUNT", b"%d" % READ_COUNT, b"BLOCK", b"%d" % BLOCK_MS)
) + _bulk(b"STREAMS")
_XREAD_ARGS = 6  # the arguments in _XREAD_HEAD


# XREAD COUNT <READ_COUNT> STREAMS: the follow-up, which does not block.
_FOLLOW_UP_HEAD = b"".join(_bulk(arg) for arg in (b"XREAD", b"COUNT", b"%d" % READ_COUNT)) + _bulk(
    b"STREAMS"
)
_FOLLOW_UP_ARGS = 4


def xread_command(keys: list[bytes], ids: list[bytes]) -> bytes:
    """The `XREAD` of the lane (`COUNT`, `BLOCK`) over streams `keys` after `ids`, both already
    RESP bulk strings (`_bulk`), as one RESP command."""
    count = b"*%d\r\n" % (_XREAD_ARGS + len(keys) + len(ids))
    return b"".join((count, _XREAD_HEAD, *keys, *ids))


def read_commands(keys: list[bytes], ids: list[bytes]) -> bytes:
    """The lane's blocking `XREAD` and, pipelined behind it, the same read without `BLOCK`: Redis
    answers a blocked `XREAD` with the one stream whose write woke it, and runs the follow-up
    once that write's batch is done, so the follow-up brings the rest of the batch in the same
    round trip (the entries both found are delivered once, `_merge`)."""
    count = b"*%d\r\n" % (_FOLLOW_UP_ARGS + len(keys) + len(ids))
    return b"".join((xread_command(keys, ids), count, _FOLLOW_UP_HEAD, *keys, *ids))


def _pairs(reply: Any) -> list[tuple[bytes, list[Any]]]:
    """An `XREAD` reply as (key, raw entries) pairs: RESP2 answers a list of them, RESP3 (a
    `protocol=3` Redis URL) a map, nothing read: None."""
    if isinstance(reply, dict):
        return list(reply.items())
    return [(key, raw) for key, raw in reply or ()]


def _merge(blocked: Any, follow_up: Any) -> list[tuple[bytes, list[Any]]]:
    """The entries of the blocking read, then those of the follow-up past them: both read after
    the same ids, so a stream's entries in both are delivered once, in order."""
    merged = _pairs(blocked)
    position = {key: index for index, (key, _) in enumerate(merged)}
    for key, raw in _pairs(follow_up):
        index = position.get(key)
        if index is None:
            position[key] = len(merged)
            merged.append((key, raw))
            continue
        had = merged[index][1]
        last = _entry_id(had[-1][0]) if had else (-1, -1)
        newer = [entry for entry in raw if _entry_id(entry[0]) > last]
        if newer:
            merged[index] = (key, [*had, *newer])
    return merged


def _entry_id(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence or 0)


def _entries(raw: list[Any]) -> Entries:
    """A stream's entries as the RESP2 reply holds them (`[id, [field, value, ...]]` each) in the
    shape redis-py's `xread` returns (`(id, {field: value})`)."""
    found: Entries = []
    for entry_id, flat in raw:
        pairs = iter(flat or ())
        found.append((entry_id, dict(zip(pairs, pairs, strict=True))))
    return found


def _hand_over(found: list[tuple[Subscription, Entries]]) -> None:
    """Deliver what a read found, once (the list is emptied). Sinks write to sockets in this
    one step of the loop, so only the first `SINK_STREAMS` streams' go to their sinks; the
    rest wake their readers, whose writes take turns with the loop's other work."""
    for index, (subscription, entries) in enumerate(found):
        subscription.deliver(entries, index < SINK_STREAMS)
    found.clear()


class _Lane:
    """One task, one blocking `XREAD` at a time over its subscriptions' streams and its wake-up
    stream. Idle (no Redis traffic) while it has no subscription."""

    def __init__(self, client: redis.Redis, wake_key: str) -> None:
        self.client, self.wake_key = client, wake_key.encode()
        self._packed_wake_key = _bulk(self.wake_key)
        self.subscriptions: dict[bytes, Subscription] = {}
        self.error: Exception | None = None  # the last read's failure, until a read succeeds
        self._wake_last = b"0-0"
        self._reading = False  # an XREAD is in flight with the key set of that moment
        self._woken = False  # ... and a wake-up entry was already asked for it
        self._has_work = asyncio.Event()
        self._stopped = False
        self._wakes: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self._run(), name=f"replies {wake_key}")
        self.task.add_done_callback(self._ended)

    def changed(self) -> None:
        """The key set changed: an idle lane starts reading, a blocked one is woken up."""
        self._has_work.set()
        if self._reading and not self._woken:
            self._woken = True
            wake = asyncio.create_task(self._wake())
            self._wakes.add(wake)
            wake.add_done_callback(self._wakes.discard)

    async def _wake(self) -> None:
        # Best effort: if Redis fails here, the blocked read fails as well or ends within
        # BLOCK_MS, and the next read includes the new key either way.
        with contextlib.suppress(redis.RedisError, OSError):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, _WAKE_FIELDS, maxlen=WAKE_MAXLEN, approximate=True)
                pipe.expire(self.wake_key, WAKE_TTL)
                await pipe.execute()

    async def _run(self) -> None:
        backoff = Backoff(maximum=2.0)
        # What the last read found, handed over once the next read is sent: Redis serves that
        # read while the readers' sinks write to their sockets.
        found: list[tuple[Subscription, Entries]] = []
        hand_over = functools.partial(_hand_over, found)
        while not self._stopped:
            if not self.subscriptions:
                hand_over()
                self._has_work.clear()
                await self._has_work.wait()
                continue
            reading = [self._packed_wake_key]
            ids = [_bulk(self._wake_last)]
            for subscription in self.subscriptions.values():
                if not subscription.paused:
                    reading.append(subscription.packed_key)
                    ids.append(subscription.packed)
            self._reading, self._woken = True, False
            try:
                read = await self._xread(read_commands(reading, ids), hand_over)
            except (redis.RedisError, OSError) as exc:
                hand_over()
                if self._stopped:
                    return
                self.error = exc
                for subscription in list(self.subscriptions.values()):
                    subscription.fail(exc)
                await backoff.sleep()
                continue
            finally:
                self._reading = False
            self.error = None
            backoff.reset()
            for key, raw in read:
                if key == self.wake_key:
                    self._wake_last = raw[-1][0]
                    continue
                reader = self.subscriptions.get(key)
                if reader is not None and raw:
                    entries = _entries(raw)
                    reader.advance(entries)
                    found.append((reader, entries))

    async def _xread(
        self, command: bytes, sent: Callable[[], None]
    ) -> list[tuple[bytes, list[Any]]]:
        """Send the packed reads (`read_commands`) on a connection of the client's pool, call
        `sent` once they are out, and return what they found, merged (empty: nothing within the
        block). A connection that fails or is interrupted mid-command is dropped, as redis-py
        drops it."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(command)
            sent()
            blocked = await connection.read_response()
            follow_up = await connection.read_response()
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
        return _merge(blocked, follow_up)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not an outage: its readers end through their outage path (and can resume on
        # a new lane) instead of waiting for a read that no longer runs.
        log.error("a reply lane failed", exc_info=task.exception())
        self._fail_all(redis.ConnectionError("the reply lane failed"))

    def _fail_all(self, error: Exception) -> None:
        self.error = error
        for subscription in list(self.subscriptions.values()):
            subscription.fail(error)

    async def stop(self) -> None:
        # redis-py may turn the cancellation of a read into a connection error, which the loop
        # rides out like any other: the flag ends it either way.
        self._stopped = True
        for task in (self.task, *self._wakes):
            task.cancel()
        for task in (self.task, *self._wakes):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Readers still streaming hear what they would of a Redis gone away: their outage
        # budget runs, then they end with ANSWER_INTERRUPTED, rather than wait for nothing.
        self._fail_all(redis.ConnectionError("the gateway's reply reader has stopped"))


class ReplyReader:
    """The gateway's reply streams read together: `subscribe` for each reader, `stop` at
    shutdown. Lanes start on first use and stay for the process's life (one per `LANE_KEYS`
    streams read at once at the peak, plus one per extra reader of a stream already read)."""

    def __init__(self, client: RedisClient) -> None:
        if not isinstance(client, redis.Redis):
            raise TypeError("the shared reply reader reads one Redis, not a cluster")
        self.client = client
        self._id = uuid4().hex
        self._lanes: list[_Lane] = []
        self._numbers = itertools.count()  # a lane's number names its wake-up stream

    @contextlib.contextmanager
    def subscribe(self, key: str, after: str, sink: Sink | None = None) -> Iterator[Subscription]:
        """A subscription to stream `key` after entry id `after`, read by the lanes until the
        block exits (then removed at once: its key leaves the next read); `sink` as
        `Subscription` says."""
        raw = key.encode()
        lane = self._lane_for(raw)
        subscription = Subscription(lane, raw, after, sink)
        lane.subscriptions[raw] = subscription
        lane.changed()
        try:
            yield subscription
        finally:
            del lane.subscriptions[raw]
            subscription.close()

    def readers(self) -> int:
        """How many subscriptions are open (for tests and metrics)."""
        return sum(len(lane.subscriptions) for lane in self._lanes)

    def _lane_for(self, key: bytes) -> _Lane:
        # Two readers of one answer (a resume beside the first stream) cannot share an XREAD:
        # a command names each stream once, with one id.
        self._lanes = [lane for lane in self._lanes if not lane.task.done()]
        for lane in self._lanes:
            if key not in lane.subscriptions and len(lane.subscriptions) < LANE_KEYS:
                return lane
        lane = _Lane(self.client, keys.gateway_replies_wake(self._id, next(self._numbers)))
        self._lanes.append(lane)
        return lane

    async def stop(self) -> None:
        """Stop every lane (bounded: cancels the blocked reads); idempotent. Readers still
        subscribed get a `redis.ConnectionError` from then on, as if Redis had gone away."""
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            await lane.stop()
