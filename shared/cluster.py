"""Redis Cluster fan-out: sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7+) for many shards.

Plain PUBLISH in a cluster is broadcast to every node, so fan-out traffic does not shrink as shards
are added. A shard channel lives in one hash slot, like a key: SPUBLISH goes to the shard that owns
the slot and only that shard's subscribers see it. This module owns the two halves:

- `create_client(url)`: an asyncio `RedisCluster` with the timeouts of `shared.redis_client`;
  `spublish(client, channel, payload)` routes by the channel's slot; `lean_handshake()`, the
  connection options every Redis connection of the project opens with.
- `ShardedSubscriber`: a gateway's subscriptions over one connection per shard primary, each
  read by one task with the loop of the single-Redis fan-out (`gateway.fanout`): no per-message
  timeout, no queue hop — each message is handed to the owner's `on_message` on the reader task,
  and a pinger per shard watches for silence instead. When the cluster moves a slot (resharding,
  failover), Redis ends the subscriptions of that slot with a server-sent `sunsubscribe`; the
  subscriber refreshes the topology and subscribes again on the new owner. Messages published
  while a slot moves can be lost (pub/sub is at-most-once), which is why notifications carry a
  `seq` and the gateway replays gaps from the notifications service.

Infrastructure failures raise `ClusterUnavailable`; the callers decide what a client is told.

Channel names must not contain `{...}` hash tags unless several channels are meant to share a
slot; `shared.keys` names (`ch:user:<uuid>`) contain none, so they spread over every shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from shared.backoff import Backoff
from shared.redis_packing import PackedConnection

log = logging.getLogger(__name__)

# (channel, payload) as Redis sent them; called on a shard's reader task, must not wait.
OnMessage = Callable[[bytes, bytes], None]


class ClusterUnavailable(Exception):
    """The cluster did not confirm a subscription in time."""


# The protocol of the links that only read pub/sub messages (the fan-out's, one per shard on a
# cluster). redis-py 8 speaks RESP3 unless told otherwise, and hands every RESP3 push (each
# message) to an awaited handler that also builds a debug line of the message whether or not
# it is logged: 10-11 µs of the reader's CPU per message against 4-7 µs over RESP2, whose
# messages are plain arrays (docs/performance-notes.md, "Pub/sub links over RESP2").
PUBSUB_PROTOCOL = 2
# Replies a subscriber link's reader handles before it lets the event loop run other work: with
# replies already buffered, redis-py returns each without suspending, so thousands at once (the
# unsubscribe confirmations of a mass disconnect, a burst of messages) made one turn of tens of
# milliseconds. 256 are a few milliseconds even when each message is delivered to a socket.
READ_SLICE = 256


async def read_reply(conn: AbstractConnection) -> Any:
    """The next reply on a subscriber link, from the link's parser itself. redis-py's
    `read_response` around it is, per message, three more coroutine levels, an optional
    timeout, the host's name formatted for an error that is rarely raised and a protocol check
    (about 2 µs in the fan-out's read loop); a subscriber link needs none of it: no timeout (its
    pinger watches for silence), no health check. An error reply is raised, as there; a lost
    link raises redis-py's `ConnectionError` or the socket's `OSError`, and the caller, who
    reads nothing more from it, disconnects it."""
    parser: Any = conn._parser  # an asyncio parser (hiredis's or RESP2's): `read_response`
    reply = await parser.read_response()
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def lean_handshake() -> dict[str, Any]:
    """Connection options that keep a new Redis connection to HELLO and AUTH: no `CLIENT
    SETINFO` (informational only) and no `CLIENT MAINT_NOTIFICATIONS` (a Redis Enterprise feature;
    our clients recover from any reconnect by themselves). Redis before 7.2 rejects both, and
    redis-py raised and swallowed an error for each, on every new pooled connection: 7 ms per
    connection against 2 ms without (docs/performance-notes.md), in the bursts that open many."""
    return {
        "driver_info": None,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


def create_client(
    url: str, *, decode_responses: bool = False, max_connections: int | None = None
) -> RedisCluster:
    """A cluster client for `url` (any one node; the rest is discovered). No I/O happens here.

    `max_connections` bounds each node's pool (None: redis-py's default)."""
    options: dict[str, Any] = (
        {} if max_connections is None else {"max_connections": max_connections}
    )
    return RedisCluster.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        require_full_coverage=True,
        decode_responses=decode_responses,
        **lean_handshake(),
        **options,
    )


async def spublish(client: RedisCluster, channel: str, payload: bytes) -> int:
    """SPUBLISH `payload` on `channel` (routed to the slot's shard); returns how many subscribers
    of that shard received it."""
    return int(await client.spublish(channel, payload))


class _Shard:
    """One shard primary: a dedicated connection in subscribe mode, its reader and its pinger."""

    def __init__(self, node: ClusterNode) -> None:
        self.name = node.name
        # No hidden retries: a dropped link must surface, so the subscriber re-subscribes
        # deliberately and tells its owner to replay what was missed meanwhile.
        self.conn = PackedConnection(
            host=node.host,
            port=int(node.port),
            socket_connect_timeout=2,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            protocol=PUBSUB_PROTOCOL,
            **lean_handshake(),
        )
        self.channels: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.heard = 0.0  # loop time of the last reply on the link

    async def send(self, command: bytes, *channels: str) -> None:
        await self.conn.send_command(command, *channels)

    async def close(self) -> None:
        """Stop the reader and pinger (except the caller) and close the link; idempotent."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.conn.disconnect(nowait=True)


class ShardedSubscriber:
    """Sharded pub/sub subscriptions of one process, across every shard of a cluster.

    Use as `async with ShardedSubscriber(client, on_message=...) as subscriber:`. `subscribe`
    returns once Redis has confirmed every channel (so a caller may replay from its durable source
    right after, without a window in which a publish is neither replayed nor received) and raises
    `ClusterUnavailable` if that takes longer than `confirm_timeout`. `on_message(channel,
    payload)` is called synchronously on the shard's reader, in the order the shard delivered the
    messages (no order across shards); it must not wait (it may defer work, keeping the order).

    Subscriptions follow their slot when it moves and survive a lost shard connection (found by
    its errors, or by PINGs going unanswered for 2.5 `ping_interval`s): they are re-subscribed
    wherever the slot lives now (with backoff), and once confirmed
    `on_resubscribed(channels)` is called so the owner can replay what was published meanwhile.
    Nothing is buffered here: a consumer too slow for Redis makes Redis drop this client when its
    pub/sub output buffer limit is exceeded — never unbounded memory here. Closing is idempotent
    and leaves no task running.
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        on_message: OnMessage,
        confirm_timeout: float = 5.0,
        ping_interval: float = 5.0,
        on_resubscribed: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self._client = client
        self._on_message = on_message
        self._shards: dict[str, _Shard] = {}
        self._wanted: set[str] = set()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._confirm_timeout = confirm_timeout
        self._ping_interval = ping_interval
        self._on_resubscribed = on_resubscribed
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # Channels a `_resubscribe` is bringing back: a second one (a slot move followed by the
        # refused SSUBSCRIBE ending the old shard's link) leaves them to the first, so the owner
        # hears of each channel coming back once.
        self._following: set[str] = set()
        self._closed = False

    async def __aenter__(self) -> ShardedSubscriber:
        await self._client.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def channels(self) -> frozenset[str]:
        """The channels this subscriber wants, whether or not a slot move is in progress."""
        return frozenset(self._wanted)

    def confirmed(self, channel: str) -> bool:
        """Whether Redis confirmed `channel` and its shard link has not been lost since."""
        event = self._confirmed.get(channel)
        return event is not None and event.is_set()

    async def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE each channel on the shard owning its slot and wait for Redis to confirm
        them all; subscribing twice is harmless. Raises `ClusterUnavailable` when unconfirmed in
        time, `RedisError`/`OSError` when a shard cannot be reached."""
        async with self._lock:
            self._wanted.update(channels)
            for channel in channels:
                await self._subscribe_on_owner(channel)
        await self._wait_confirmed(channels)

    async def unsubscribe(self, *channels: str) -> None:
        """SUNSUBSCRIBE each channel; unknown channels are ignored."""
        async with self._lock:
            for channel in channels:
                self._wanted.discard(channel)
                self._confirmed.pop(channel, None)
                for shard in self._shards.values():
                    if channel in shard.channels:
                        shard.channels.discard(channel)
                        await shard.send(b"SUNSUBSCRIBE", channel)

    async def aclose(self) -> None:
        """Stop every task and close every shard connection (idempotent)."""
        self._closed = True
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()

    def _spawn(self, coroutine: Coroutine[None, None, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_confirmed(self, channels: Iterable[str]) -> None:
        events = [self._confirmed[c] for c in channels if c in self._confirmed]
        try:
            async with asyncio.timeout(self._confirm_timeout):
                for event in events:
                    await event.wait()
        except TimeoutError:
            raise ClusterUnavailable("Redis Cluster did not confirm the subscription") from None

    async def _subscribe_on_owner(self, channel: str) -> None:
        node = self._client.get_node_from_key(channel)  # raises SlotNotCoveredError if none
        assert node is not None
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(node)
        if not shard.tasks:
            await shard.conn.connect()  # type: ignore[no-untyped-call]
            shard.heard = asyncio.get_running_loop().time()
            shard.tasks = [
                asyncio.create_task(self._read(shard), name=f"sharded:{shard.name}"),
                asyncio.create_task(self._ping(shard), name=f"sharded-ping:{shard.name}"),
            ]
        if channel not in shard.channels:
            self._confirmed.setdefault(channel, asyncio.Event()).clear()
            await shard.send(b"SSUBSCRIBE", channel)
            shard.channels.add(channel)

    async def _ping(self, shard: _Shard) -> None:
        """PING every interval; a link silent for 2.5 intervals (a half-open TCP connection, a
        node that stopped answering) is closed, which ends the blocked read with an error."""
        loop = asyncio.get_running_loop()
        silence = 2.5 * self._ping_interval
        with contextlib.suppress(RedisError, OSError):
            while True:
                await asyncio.sleep(self._ping_interval)
                if loop.time() - shard.heard > silence:
                    log.warning("shard %s silent for %.1f s: closing its link", shard.name, silence)
                    await shard.conn.disconnect(nowait=True)
                    return
                await shard.send(b"PING")

    async def _read(self, shard: _Shard) -> None:
        # No read timeout: redis-py would open an asyncio timeout per message; the pinger
        # watches for silence instead (the loop of `gateway.fanout.Fanout`).
        loop = asyncio.get_running_loop()
        conn, on_message = shard.conn, self._on_message
        read = 0
        try:
            while True:
                response = await read_reply(conn)
                shard.heard = loop.time()
                read += 1
                if read == READ_SLICE:
                    read = 0
                    await asyncio.sleep(0)
                if not isinstance(response, list):
                    continue
                kind = response[0]
                if kind == b"smessage":
                    on_message(response[1], response[2])
                elif kind == b"ssubscribe":
                    event = self._confirmed.get(response[1].decode())
                    if event is not None:
                        event.set()
                elif kind == b"sunsubscribe":
                    channel = response[1].decode()
                    if channel in shard.channels:
                        # Not asked for: the slot moved to another shard. Follow it.
                        shard.channels.discard(channel)
                        self._spawn(self._resubscribe({channel}), f"follow:{channel}")
        except (RedisError, OSError) as exc:
            # The shard's node died or failed over: its channels now live elsewhere, or will.
            log.warning("shard %s lost (%s); re-subscribing its channels", shard.name, exc)
            self._spawn(self._replace(shard), f"replace:{shard.name}")

    async def _replace(self, shard: _Shard) -> None:
        async with self._lock:
            if self._shards.get(shard.name) is shard:
                del self._shards[shard.name]
            for channel in shard.channels:
                if channel in self._confirmed:
                    self._confirmed[channel].clear()
        await shard.close()
        await self._resubscribe(set(shard.channels))

    async def _resubscribe(self, channels: set[str]) -> None:
        """Subscribe `channels` (those still wanted) where their slots live now, after refreshing
        the topology, until Redis confirms them (retried with backoff); then tell the owner.
        Channels another call is already bringing back are left to it."""
        channels = channels - self._following
        if not channels:
            return
        self._following |= channels
        try:
            await self._follow(channels)
        finally:
            self._following -= channels

    async def _follow(self, channels: set[str]) -> None:
        backoff = Backoff(base=0.1, maximum=5.0)
        while not self._closed:
            async with self._lock:
                pending = channels & self._wanted
                try:
                    await self._client.nodes_manager.initialize()
                    for channel in pending:
                        await self._subscribe_on_owner(channel)
                    sent = True
                except (RedisError, OSError) as exc:
                    log.warning("re-subscribing %d shard channels failed: %s", len(pending), exc)
                    sent = False
            if sent:
                try:
                    await self._wait_confirmed(pending)
                except ClusterUnavailable:
                    sent = False
            if sent:
                if pending and self._on_resubscribed is not None:
                    self._on_resubscribed(frozenset(pending))
                return
            await backoff.sleep()
