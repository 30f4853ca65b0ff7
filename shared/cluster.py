"""Redis Cluster fan-out: sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7+) for many shards.

Plain PUBLISH in a cluster is broadcast to every node, so fan-out traffic does not shrink as shards
are added. A shard channel lives in one hash slot, like a key: SPUBLISH goes to the shard that owns
the slot and only that shard's subscribers see it. This module owns the two halves:

- `create_client(url)`: an asyncio `RedisCluster` with the timeouts of `shared.redis_client`;
  `spublish(client, channel, payload)` routes by the channel's slot.
- `ShardedSubscriber`: a gateway's subscriptions over one connection per shard primary, a reader
  task per connection, and one bounded queue of `(channel, payload)` for the consumer. When the
  cluster moves a slot (resharding, failover), Redis ends the subscriptions of that slot with a
  server-sent `sunsubscribe`; the subscriber refreshes the topology and subscribes again on the
  new owner. Messages published while a slot moves can be lost (pub/sub is at-most-once), which
  is why notifications carry a `seq` and the gateway replays gaps from the notifications service.

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

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared.backoff import Backoff
from shared.errors import Unavailable

log = logging.getLogger(__name__)


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
        **options,
    )


async def spublish(client: RedisCluster, channel: str, payload: bytes) -> int:
    """SPUBLISH `payload` on `channel` (routed to the slot's shard); returns how many subscribers
    of that shard received it."""
    return int(await client.spublish(channel, payload))


class _Shard:
    """One shard primary: a dedicated connection in subscribe mode and its reader task."""

    def __init__(self, node: ClusterNode) -> None:
        self.name = node.name
        # No hidden retries: a dropped link must surface, so the subscriber re-subscribes
        # deliberately and tells its owner to replay what was missed meanwhile.
        self.client = redis.Redis(
            host=node.host,
            port=int(node.port),
            socket_connect_timeout=2,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        self.pubsub: PubSub = self.client.pubsub()
        self.channels: set[str] = set()
        self.reader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop the reader (unless it is the caller) and close the connection; idempotent."""
        reader, self.reader = self.reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.client.aclose()


class ShardedSubscriber:
    """Sharded pub/sub subscriptions of one process, across every shard of a cluster.

    Use as `async with ShardedSubscriber(client) as subscriber:`. `subscribe` returns once Redis
    has confirmed every channel (so a caller may replay from its durable source right after,
    without a window in which a publish is neither replayed nor received) and raises
    `Unavailable` if that takes longer than `confirm_timeout`. `get()` returns the next
    `(channel, payload)` in the order each shard delivered them (no order across shards).

    Subscriptions follow their slot when it moves and survive a lost shard connection (found by
    its errors, or by PINGs going unanswered for 2.5 `ping_interval`s): they are re-subscribed
    wherever the slot lives now (with backoff), and once confirmed
    `on_resubscribed(channels)` is called so the owner can replay what was published meanwhile.
    The queue is bounded (`queue_size`): a consumer that stops reading stalls the readers, and
    Redis then drops this client when its pub/sub output buffer limit is exceeded — never
    unbounded memory here. Closing is idempotent and leaves no task running.
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        queue_size: int = 10_000,
        confirm_timeout: float = 5.0,
        ping_interval: float = 5.0,
        on_resubscribed: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self._client = client
        self._shards: dict[str, _Shard] = {}
        self._wanted: set[str] = set()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(queue_size)
        self._confirm_timeout = confirm_timeout
        self._ping_interval = ping_interval
        self._on_resubscribed = on_resubscribed
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
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
        them all; subscribing twice is harmless. Raises `Unavailable` when unconfirmed in time."""
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
                        await shard.pubsub.sunsubscribe(channel)

    async def get(self) -> tuple[str, bytes]:
        """The next message: `(channel, payload)`. Waits until one arrives."""
        return await self._queue.get()

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
            raise Unavailable("Redis Cluster did not confirm the subscription") from None

    async def _subscribe_on_owner(self, channel: str) -> None:
        node = self._client.get_node_from_key(channel)  # raises SlotNotCoveredError if none
        assert node is not None
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(node)
        if channel not in shard.channels:
            self._confirmed.setdefault(channel, asyncio.Event()).clear()
            await shard.pubsub.ssubscribe(channel)
            shard.channels.add(channel)
        if shard.reader is None:
            shard.reader = asyncio.create_task(self._read(shard), name=f"sharded:{shard.name}")

    async def _read(self, shard: _Shard) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        try:
            while True:
                message = await shard.pubsub.get_message(timeout=self._ping_interval)
                if message is None:
                    # A silent link may be a half-open TCP connection: PING, and give up on it
                    # when even the PONGs stop coming.
                    if loop.time() - heard > 2.5 * self._ping_interval:
                        raise RedisConnectionError(f"no answer from {shard.name}")
                    await shard.pubsub.ping()
                    continue
                heard = loop.time()
                kind = message["type"]
                if kind == "pong":
                    continue
                channel = message["channel"].decode()
                if kind == "smessage":
                    await self._queue.put((channel, message["data"]))
                elif kind == "ssubscribe" and channel in self._confirmed:
                    self._confirmed[channel].set()
                elif kind == "sunsubscribe" and channel in shard.channels:
                    # Not asked for: the slot moved to another shard. Follow it.
                    shard.channels.discard(channel)
                    self._spawn(self._resubscribe({channel}), f"follow:{channel}")
        except RedisError as exc:
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
        the topology, until Redis confirms them (retried with backoff); then tell the owner."""
        backoff = Backoff(base=0.1, maximum=5.0)
        while not self._closed:
            async with self._lock:
                pending = channels & self._wanted
                try:
                    await self._client.nodes_manager.initialize()
                    for channel in pending:
                        await self._subscribe_on_owner(channel)
                    sent = True
                except RedisError as exc:
                    log.warning("re-subscribing %d shard channels failed: %s", len(pending), exc)
                    sent = False
            if sent:
                try:
                    await self._wait_confirmed(pending)
                except Unavailable:
                    sent = False
            if sent:
                if pending and self._on_resubscribed is not None:
                    self._on_resubscribed(frozenset(pending))
                return
            await backoff.sleep()
