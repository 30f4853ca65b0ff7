"""Redis pub/sub fan-out: one subscriber connection per gateway instance.

The instance subscribes to a user's or session's channel when its first local connection joins
and unsubscribes when the last one leaves; the broadcast channel is always subscribed. Members
that end in bulk (a mass disconnect) are `forget`-ten at once, without I/O, and the channels
they left unneeded are unsubscribed later, together, by `release()`. Each published envelope is
split once (`shared.wire.decode_envelope`), its frame checked once to be UTF-8, and the frame's
bytes handed with its routing metadata to the delivery callback together with the set of local
members — no per-connection Redis work, no re-encoding.

The link is watched (PING every few seconds; silence closes it): when it drops, the reader
reconnects with jittered backoff, resubscribes everything, and — once Redis has confirmed every
subscription — calls `on_resync` so the owner can replay what was published meanwhile from the
durable source. Subscriptions are confirmed before `join()` returns, so a caller may replay after
it without a window in which a publish is neither replayed nor received.

On a Redis Cluster (`REDIS_CLUSTER`) `ClusterFanout` does the same over sharded pub/sub
(`shared.cluster.ShardedSubscriber`: SSUBSCRIBE on the shard owning each channel's slot, one
connection per shard). Routing, decoding and delivery are shared; when one shard's link is lost
or its slots move, only the channels of that shard are re-subscribed, and `on_resync` is called
with them, so only their users are caught up. `create_fanout` picks the class for a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Hashable
from typing import Generic, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from gateway import metrics
from shared import keys, redis_packing
from shared.backoff import Backoff
from shared.cluster import (
    PUBSUB_PROTOCOL,
    READ_SLICE,
    ClusterUnavailable,
    ShardedSubscriber,
    lean_handshake,
    read_reply,
)
from shared.redis_client import RedisClient, is_cluster
from shared.wire import EnvelopeMeta, decode_envelope

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Hashable)
# (members, routing metadata, the frame: UTF-8 JSON bytes, validated)
Deliver = Callable[[Collection[M], EnvelopeMeta, bytes], None]

BROADCAST = keys.BROADCAST_CHANNEL.encode()


class FanoutUnavailable(Exception):
    """Redis did not confirm a subscription in time."""


class _Router(Generic[M]):
    """Which local members each channel routes to, the decode-once delivery of a message, and
    the reader task's lifecycle (`_run` reads; `_disconnect` closes the links)."""

    def __init__(self, everyone: Collection[M], deliver: Deliver[M]) -> None:
        self._everyone = everyone
        self._deliver = deliver
        self.routes: dict[bytes, set[M]] = {}
        # Channels `forget` left routed to nobody: still subscribed until `release()`.
        self._unneeded: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fanout-reader")

    async def stop(self) -> None:
        """Stop reading and close the links to Redis; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    def _route(self, member: M, channels: tuple[bytes, ...]) -> list[bytes]:
        """Route `channels` to `member`; returns those nobody here needed before."""
        new: list[bytes] = []
        for channel in channels:
            members = self.routes.get(channel)
            if members is None:
                self.routes[channel] = {member}
                new.append(channel)
            else:
                members.add(member)
        return new

    def _unroute(self, member: M, channels: tuple[bytes, ...]) -> list[bytes]:
        """Stop routing `channels` to `member`; returns those nobody here needs any more."""
        gone: list[bytes] = []
        for channel in channels:
            members = self.routes.get(channel)
            if members is None:
                continue
            members.discard(member)
            if not members:
                del self.routes[channel]
                gone.append(channel)
        return gone

    async def leave(self, member: M, channels: tuple[bytes, ...]) -> None:
        """Stop routing `channels` to `member`; unsubscribes the channels nobody here needs.
        Idempotent."""
        gone = self._unroute(member, channels)
        if gone:
            await self._unsubscribe(gone)

    def forget(self, member: M, channels: tuple[bytes, ...]) -> None:
        """Stop routing `channels` to `member` at once, without I/O; a channel nobody here needs
        any more stays subscribed (routed to nobody) until `release()`. Idempotent."""
        for channel in channels:
            members = self.routes.get(channel)
            if members is not None:
                members.discard(member)
                if not members:
                    self._unneeded.add(channel)

    async def release(self) -> None:
        """Unsubscribe, together, the channels `forget` left routed to nobody that still are.

        Decided here, not in `forget`: a member that joined such a channel meanwhile found it
        subscribed and confirmed, so it must stay."""
        routes, gone = self.routes, []
        for channel in self._unneeded:
            if channel in routes and not routes[channel]:
                del routes[channel]
                gone.append(channel)
        self._unneeded.clear()
        if gone:
            await self._unsubscribe(gone)

    async def _unsubscribe(self, channels: list[bytes]) -> None:
        raise NotImplementedError

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


class Fanout(_Router[M]):
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
        super().__init__(everyone, deliver)
        self._pool = ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=0,
            protocol=PUBSUB_PROTOCOL,
            **lean_handshake(),
            **redis_packing.client_options(redis_url),
        )
        self._on_resync = on_resync
        self._ping_interval = ping_interval
        # Channels Redis confirmed on the current link, and the joins waiting for a confirmation
        # (futures exist only while a join waits: an idle channel costs one set entry).
        self._confirmed: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pending: dict[bytes, int] = {}
        self._conn: AbstractConnection | None = None
        self._heard = 0.0  # loop time of the last reply on the current link
        self._resyncing = False

    async def _disconnect(self) -> None:
        await self._pool.disconnect()

    @property
    def connected(self) -> bool:
        return BROADCAST in self._confirmed

    async def join(self, member: M, channels: tuple[bytes, ...], timeout: float) -> None:
        """Route `channels` to `member`; returns once Redis confirmed every one of them.

        Raises `FanoutUnavailable` after `timeout` (the member stays routed; call `leave`).
        """
        new = self._route(member, channels)
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

    async def _unsubscribe(self, channels: list[bytes]) -> None:
        self._confirmed.difference_update(channels)
        await self._command(b"UNSUBSCRIBE", channels)

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
            self._heard = asyncio.get_running_loop().time()
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
        """PING every interval; a link that has said nothing for 2.5 intervals (a half-open TCP
        connection after a network failure, a Redis that stopped answering) is closed, which
        ends the blocked read with a connection error and so reconnects."""
        loop = asyncio.get_running_loop()
        silence = self._ping_interval * 2.5
        with contextlib.suppress(redis.RedisError, OSError):
            while True:
                await asyncio.sleep(self._ping_interval)
                if loop.time() - self._heard > silence:
                    log.warning("pub/sub link silent: closing it", extra={"seconds": silence})
                    await conn.disconnect(nowait=True)
                    return
                await conn.send_command(b"PING")

    async def _read(self, conn: AbstractConnection, backoff: Backoff) -> None:
        # No read timeout: redis-py would open an asyncio timeout per message (~6 % of the
        # gateway's CPU at 20k messages/s); the pinger watches for silence instead.
        loop = asyncio.get_running_loop()
        read = 0
        while True:
            response = await read_reply(conn)
            self._heard = loop.time()
            read += 1
            if read == READ_SLICE:
                read = 0
                await asyncio.sleep(0)
            if not isinstance(response, list):
                continue  # b"PONG": the answer to the pinger, proof of life
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


class ClusterFanout(_Router[M]):
    """`Fanout` on a Redis Cluster, same contract: sharded subscriptions (one connection per
    shard primary), confirmed before `join` returns; messages delivered in the order each shard
    sent them (a user's channel lives on one shard, so a user's frames stay in order). When a
    shard's subscriptions come back (link lost, primary restarted, slot moved),
    `on_resync(channels)` is called with that shard's channels only."""

    def __init__(
        self,
        client: RedisCluster,
        everyone: Collection[M],
        deliver: Deliver[M],
        on_resync: Callable[[Collection[bytes]], None],
        ping_interval: float = 5.0,
    ) -> None:
        super().__init__(everyone, deliver)
        self._client = client
        self._on_resync = on_resync
        self._subscriber = ShardedSubscriber(
            client,
            on_message=self._message,
            ping_interval=ping_interval,
            on_resubscribed=self._resubscribed,
        )
        self._ready = asyncio.Event()

    async def _disconnect(self) -> None:
        await self._subscriber.aclose()

    @property
    def connected(self) -> bool:
        return self._subscriber.confirmed(keys.BROADCAST_CHANNEL)

    async def join(self, member: M, channels: tuple[bytes, ...], timeout: float) -> None:
        """Route `channels` to `member`; returns once their shards confirmed every one of them.

        Raises `FanoutUnavailable` after `timeout`, or at once when a shard refuses (the member
        stays routed; call `leave`)."""
        self._route(member, channels)
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            # Bounded by the subscriber's own confirmation timeout; not cancelled midway, which
            # could leave a shard connection half-way through a command.
            await self._subscriber.subscribe(*(channel.decode() for channel in channels))
        except (TimeoutError, ClusterUnavailable, redis.RedisError, OSError) as exc:
            raise FanoutUnavailable(
                f"Redis Cluster did not confirm the subscription: {exc!r}"
            ) from None

    async def _unsubscribe(self, channels: list[bytes]) -> None:
        try:
            await self._subscriber.unsubscribe(*(channel.decode() for channel in channels))
        except (redis.RedisError, OSError) as exc:
            # The shard's link is gone with its subscriptions; `unsubscribe` already forgot them.
            log.warning("pub/sub command failed", extra={"error": repr(exc)})

    async def _run(self) -> None:
        """Subscribe the broadcast channel; from then on the subscriber's shard readers call
        `_message` themselves."""
        backoff = Backoff(base=0.1, maximum=5.0)
        while True:
            try:
                await self._client.initialize()
                await self._subscriber.subscribe(keys.BROADCAST_CHANNEL)
                break
            except (ClusterUnavailable, redis.RedisError, OSError) as exc:
                log.warning("Redis Cluster unreachable", extra={"error": repr(exc)})
                await backoff.sleep()
        self._ready.set()

    def _resubscribed(self, channels: frozenset[str]) -> None:
        metrics.PUBSUB_RECONNECTS.inc()
        self._on_resync(frozenset(channel.encode() for channel in channels))


def create_fanout(
    client: RedisClient,
    redis_url: str,
    everyone: Collection[M],
    deliver: Deliver[M],
    on_resync: Callable[[Collection[bytes] | None], None],
    ping_interval: float = 5.0,
) -> Fanout[M] | ClusterFanout[M]:
    """The fan-out for `client`'s deployment: `ClusterFanout` on a Redis Cluster, else `Fanout`
    with a connection of its own to `redis_url`. `on_resync(channels)` is told which channels
    came back, or None for all of them."""
    if is_cluster(client):
        return ClusterFanout(client, everyone, deliver, on_resync, ping_interval)
    return Fanout(redis_url, everyone, deliver, lambda: on_resync(None), ping_interval)
