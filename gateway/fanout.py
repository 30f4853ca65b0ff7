"""Redis pub/sub fan-out: one subscriber connection per gateway instance.

The instance subscribes to a user's or session's channel when its first local connection joins
and unsubscribes when the last one leaves; the broadcast channel is always subscribed. Each
published envelope is split once (`shared.wire.decode_envelope`), its frame decoded to text once,
and handed with its routing metadata to the delivery callback together with the set of local
members — no per-connection Redis work, no re-encoding.

The link is watched (PING every few seconds, a read deadline): when it drops, the reader
reconnects with jittered backoff, resubscribes everything, and — once Redis has confirmed every
subscription — calls `on_resync` so the owner can replay what was published meanwhile from the
durable source. Subscriptions are confirmed before `join()` returns, so a caller may replay after
it without a window in which a publish is neither replayed nor received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Hashable
from typing import Any, Generic, TypeVar

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from gateway import metrics
from shared import keys
from shared.backoff import Backoff
from shared.wire import EnvelopeMeta, decode_envelope

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Hashable)
# (members, routing metadata, the frame: UTF-8 JSON bytes, validated)
Deliver = Callable[[Collection[M], EnvelopeMeta, bytes], None]

BROADCAST = keys.BROADCAST_CHANNEL.encode()


class FanoutUnavailable(Exception):
    """Redis did not confirm a subscription in time."""


class Fanout(Generic[M]):
    """Subscriptions of one instance. `join`/`leave` are called by connection handlers; the
    delivery callback is called on the reader task, synchronously, in the order Redis sent the
    messages (it must not wait; it may defer the work, keeping that order)."""

    def __init__(
        self,
        redis_url: str,
        everyone: Collection[M],
        deliver: Deliver[M],
        on_resync: Callable[[], None],
        ping_interval: float = 5.0,
    ) -> None:
        self._pool = ConnectionPool.from_url(
            redis_url, socket_connect_timeout=2, socket_keepalive=True, health_check_interval=0
        )
        self._everyone = everyone
        self._deliver = deliver
        self._on_resync = on_resync
        self._ping_interval = ping_interval
        self.routes: dict[bytes, set[M]] = {}
        # Channels Redis confirmed on the current link, and the joins waiting for a confirmation
        # (futures exist only while a join waits: an idle channel costs one set entry).
        self._confirmed: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pending: dict[bytes, int] = {}
        self._conn: AbstractConnection | None = None
        self._resyncing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fanout-reader")

    async def stop(self) -> None:
        """Stop reading and close the link; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._pool.disconnect()

    @property
    def connected(self) -> bool:
        return BROADCAST in self._confirmed

    async def join(self, member: M, channels: tuple[bytes, ...], timeout: float) -> None:
        """Route `channels` to `member`; returns once Redis confirmed every one of them.

        Raises `FanoutUnavailable` after `timeout` (the member stays routed; call `leave`).
        """
        new: list[bytes] = []
        for channel in channels:
            members = self.routes.get(channel)
            if members is None:
                self.routes[channel] = {member}
                new.append(channel)
            else:
                members.add(member)
        if new:
            await self._command(b"SUBSCRIBE", new)
        try:
            async with asyncio.timeout(timeout):
                for channel in channels:
                    if channel not in self._confirmed:
                        waiter = asyncio.get_running_loop().create_future()
                        self._waiters.setdefault(channel, []).append(waiter)
                        await waiter
        except TimeoutError:
            for channel in channels:  # forget the cancelled waiters
                waiters = [w for w in self._waiters.pop(channel, ()) if not w.done()]
                if waiters:
                    self._waiters[channel] = waiters
            raise FanoutUnavailable("Redis did not confirm the subscription") from None

    async def leave(self, member: M, channels: tuple[bytes, ...]) -> None:
        """Stop routing `channels` to `member`; unsubscribes the channels nobody here needs.
        Idempotent."""
        gone: list[bytes] = []
        for channel in channels:
            members = self.routes.get(channel)
            if members is None:
                continue
            members.discard(member)
            if not members:
                del self.routes[channel]
                self._confirmed.discard(channel)
                gone.append(channel)
        if gone:
            await self._command(b"UNSUBSCRIBE", gone)

    async def _command(self, name: bytes, channels: list[bytes]) -> None:
        conn = self._conn
        if conn is None:
            return  # (re)connecting: the resubscription will include these channels
        if name == b"SUBSCRIBE":
            for channel in channels:
                self._pending[channel] = self._pending.get(channel, 0) + 1
        try:
            await conn.send_command(name, *channels)
        except (redis.RedisError, OSError) as exc:
            log.warning("pub/sub command failed", extra={"error": repr(exc)})

    async def _run(self) -> None:
        backoff = Backoff(base=0.1, maximum=5.0)
        first = True
        while True:
            conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
            except (redis.RedisError, OSError) as exc:
                log.warning("pub/sub connect failed", extra={"error": repr(exc)})
                await backoff.sleep()
                continue
            if not first:
                metrics.PUBSUB_RECONNECTS.inc()
            self._conn, self._resyncing = conn, not first
            self._pending.clear()
            pinger = asyncio.create_task(self._ping(conn))
            try:
                await self._command(b"SUBSCRIBE", [BROADCAST, *self.routes])
                await self._read(conn, backoff)
            except (redis.RedisError, OSError) as exc:
                log.warning("pub/sub link lost", extra={"error": repr(exc)})
            finally:
                self._conn = None
                self._confirmed.clear()
                pinger.cancel()
                await conn.disconnect(nowait=True)
            first = False
            await backoff.sleep()

    async def _ping(self, conn: AbstractConnection) -> None:
        # A silent link (half-open TCP after a network failure) is found by the read deadline,
        # which these pings keep from expiring while the link is healthy.
        with contextlib.suppress(redis.RedisError, OSError):
            while True:
                await asyncio.sleep(self._ping_interval)
                await conn.send_command(b"PING")

    async def _read(self, conn: AbstractConnection, backoff: Backoff) -> None:
        deadline = self._ping_interval * 2.5
        while True:
            response: Any = await conn.read_response(timeout=deadline, push_request=True)
            kind = response[0]
            if kind == b"message":
                self._message(response[1], response[2])
            elif kind == b"subscribe":
                self._confirm(response[1])
                if BROADCAST in self._confirmed:
                    backoff.reset()

    def _confirm(self, channel: bytes) -> None:
        left = self._pending.get(channel, 1) - 1
        if left > 0:
            self._pending[channel] = left
            return
        self._pending.pop(channel, None)
        if channel == BROADCAST or channel in self.routes:
            self._confirmed.add(channel)
            for waiter in self._waiters.pop(channel, ()):
                if not waiter.done():
                    waiter.set_result(None)
        if self._resyncing and not self._pending:
            self._resyncing = False
            self._on_resync()

    def _message(self, channel: bytes, payload: bytes) -> None:
        members = self._everyone if channel == BROADCAST else self.routes.get(channel)
        if not members:
            return
        try:
            meta, frame = decode_envelope(payload)
            if not frame.isascii():
                frame.decode()  # a text frame must be UTF-8: refuse a bad one here, once
        except (ValueError, UnicodeDecodeError):
            metrics.DROPPED.labels("bad_envelope").inc()
            log.warning("dropped a malformed envelope", extra={"channel": channel.decode()})
            return
        self._deliver(members, meta, frame)
        if meta.ts is not None:
            metrics.FANOUT_LATENCY.observe(max(0.0, time.time() - meta.ts))
