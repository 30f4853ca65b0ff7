"""Topic subscriptions of this gateway's connections: the `subscribe`, `unsubscribe`,
`sub_refresh`, `presence`, `presence_stats` and `publish` frames, delivery of publications, join
and leave, recovery, presence heartbeats and subscription-token expiry (docs/topics.md).

The connection manager owns one `TopicHub` and calls it at five points: a topic frame arrived
(`handle`), a published frame for a topic channel arrived (`deliver`, on the fan-out reader,
synchronously), the Redis link came back (`resync`), a timer tick (`tick`: presence heartbeat and
token expiry), and a connection ended (`drop`). A connection is reached only through the narrow
`Subscriber` interface.

Subscribing, in this order: authorize; route the topic's channel to the connection and wait for
Redis to confirm it (from then on every publication arrives live and is held by the cursor);
read the topic's position and, with `since`, the missed publications from the history; answer
`subscribed`; go live, delivering the held publications that follow the position. Since the
channel was confirmed before the read, a publication is either in what was read or held — none
falls between. A gap seen later (a lost pub/sub message, a new epoch) is closed the same way
from the history; when the history cannot close it the client gets `unsubscribed`
`INSUFFICIENT_STATE` and resubscribes with `since`, learning `recovered: false`. A history read
that fails (Redis restarting, still loading its data, failing over) is retried `SYNC_ATTEMPTS`
times with backoff, publications held meanwhile, before the subscription ends that way: a Redis
blip must not unsubscribe every subscriber of the gateway at once.

Every refusal is an `error` frame with a `TopicErrorCode` and `details.topic`; nothing here
closes a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import msgspec
import redis.asyncio as redis

from gateway import metrics
from gateway.fanout import FanoutUnavailable
from gateway.limits import TokenBucket, Verdict
from gateway.ordering import OffsetAction as Order
from gateway.ordering import OffsetOrder
from gateway.topics import Grant, TopicRefused, Topics
from gateway.wsprotocol import TextFrame
from shared import keys
from shared.backoff import Backoff
from shared.errors import InvalidJson, InvalidMessage, RateLimited
from shared.redis_client import RedisClient, is_cluster
from shared.topic_store import Position, Recovery
from shared.topic_wire import (
    ClientInfo,
    Join,
    Leave,
    PresenceRequest,
    PresenceResult,
    PresenceStats,
    PresenceStatsRequest,
    Publication,
    Publish,
    Published,
    Since,
    SubRefresh,
    SubRefreshed,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    decode_topic_frame,
)
from shared.topic_wire import TopicErrorCode as Code
from shared.wire import EnvelopeMeta, encode, encode_envelope

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0
# History reads a sync makes before it gives up on a failing Redis, and the first cap of the
# backoff between them (full jitter, doubling: at most 1.4 s of waiting in all).
SYNC_ATTEMPTS = 4
SYNC_RETRY_BASE = 0.2


class Subscriber(Protocol):
    """What the hub needs of a connection."""

    conn_id: str
    user_id: UUID
    session_key: str
    close_code: int | None

    def offer(self, frame: TextFrame) -> bool: ...

    async def put(self, frame: TextFrame) -> None: ...


class Fanout(Protocol):
    async def join(self, member: Any, channels: tuple[bytes, ...], timeout: float) -> None: ...

    async def leave(self, member: Any, channels: tuple[bytes, ...]) -> None: ...


@dataclass(slots=True)
class Subscription:
    grant: Grant
    topic: str
    channel: bytes
    cursor: OffsetOrder = field(default_factory=OffsetOrder)
    present: bool = False
    ended: bool = False


class TopicHub:
    """Subscriptions of every connection of this instance."""

    def __init__(
        self, topics: Topics, fanout: Fanout, redis_client: RedisClient, heartbeat: float
    ) -> None:
        self.topics = topics
        self._fanout = fanout
        self._redis = redis_client
        self._settings = topics.settings
        self._lifetime_ms = int(heartbeat * 2000)  # a dead gateway's entries: two heartbeats
        self._beat_every = heartbeat / 2
        self._last_beat = 0.0
        self._subs: dict[Subscriber, dict[str, Subscription]] = {}
        self._buckets: dict[Subscriber, TokenBucket] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # Lifecycle.

    async def stop(self) -> None:
        """Cancel background work (recoveries, announcements). Idempotent."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Client frames.

    async def handle(self, conn: Subscriber, text: str) -> None:
        """Answer one topic frame; refusals become `error` frames."""
        try:
            frame = decode_topic_frame(text)
        except msgspec.ValidationError as exc:
            await conn.put(TextFrame(InvalidMessage(str(exc)).frame()))
            return
        except msgspec.DecodeError:
            await conn.put(TextFrame(InvalidJson("frame is not valid JSON").frame()))
            return
        try:
            if isinstance(frame, Subscribe):
                await self._subscribe(conn, frame)
            elif isinstance(frame, Unsubscribe):
                await self._unsubscribe(conn, frame.topic)
            elif isinstance(frame, SubRefresh):
                await self._refresh(conn, frame)
            elif isinstance(frame, PresenceRequest | PresenceStatsRequest):
                await self._presence(conn, frame)
            else:
                await self._publish(conn, frame)
        except TopicRefused as exc:
            await conn.put(TextFrame(exc.frame()))
        except (redis.RedisError, OSError, FanoutUnavailable) as exc:
            log.warning("topic frame failed", extra={"error": repr(exc)})
            topic = getattr(frame, "topic", None)
            refused = TopicRefused(Code.TOPIC_UNAVAILABLE, "Redis unavailable: try again", topic)
            await conn.put(TextFrame(refused.frame()))

    async def _subscribe(self, conn: Subscriber, frame: Subscribe) -> None:
        grant = await self.topics.authorize(frame.topic, conn.user_id, frame.token)
        topic = str(grant.topic)
        subs = self._subs.setdefault(conn, {})
        if topic in subs:
            raise TopicRefused(Code.ALREADY_SUBSCRIBED, "already subscribed", topic)
        if len(subs) >= self._settings.topics_max_per_connection:
            limit = self._settings.topics_max_per_connection
            raise TopicRefused(
                Code.TOO_MANY_TOPICS, f"at most {limit} topics per connection", topic
            )
        sub = Subscription(grant, topic, keys.topic_channel(topic).encode())
        subs[topic] = sub
        try:
            await self._fanout.join(conn, (sub.channel,), SUBSCRIBE_TIMEOUT)
            recovery = await self._read(sub, frame.since)
        except BaseException:
            await self._forget(conn, sub)
            raise
        if sub.ended or conn.close_code is not None:
            return
        answer = Subscribed(
            topic=topic,
            offset=recovery.position.offset,
            epoch=recovery.position.epoch,
            recovered=recovery.recovered,
            publications=recovery.publications,
            expires_at=grant.expires_at,
        )
        await conn.put(TextFrame(encode(answer)))
        self._go_live(conn, sub, recovery.position)
        if grant.namespace.presence:
            await self._enter_presence(conn, sub)

    async def _read(self, sub: Subscription, since: Since | None) -> Recovery:
        namespace = sub.grant.namespace
        return await self.topics.store.recover(sub.topic, namespace, since, namespace.history_size)

    def _go_live(self, conn: Subscriber, sub: Subscription, position: Position) -> None:
        """No await here: a live publication lands either in the held list or after."""
        due, gap = sub.cursor.resume(position.offset, position.epoch)
        for held in due:
            assert isinstance(held.frame, TextFrame)
            conn.offer(held.frame)
        if due:
            metrics.FRAMES_OUT.inc(len(due))
        if gap:
            self._start_sync(conn, sub)

    def _start_sync(self, conn: Subscriber, sub: Subscription) -> None:
        sub.cursor.start_sync()
        self._spawn(self._sync(conn, sub))

    async def _sync(self, conn: Subscriber, sub: Subscription) -> None:
        """Close a gap from the history; unsubscribe the client when it cannot be closed."""
        cursor = sub.cursor
        since = Since(offset=cursor.offset, epoch=cursor.epoch)
        backoff = Backoff(base=SYNC_RETRY_BASE, maximum=2.0)
        recovery: Recovery | None = None
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            try:
                recovery = await self._read(sub, since)
                break
            except (redis.RedisError, OSError) as exc:
                extra = {"topic": sub.topic, "attempt": attempt, "error": repr(exc)}
                log.warning("topic sync failed", extra=extra)
            if attempt < SYNC_ATTEMPTS:
                await backoff.sleep()
            if sub.ended or conn.close_code is not None:
                return
        if sub.ended or conn.close_code is not None:
            return
        if recovery is None:
            reason = "publications were missed and the history could not be read"
            await self._end(conn, sub, "INSUFFICIENT_STATE", reason)
            return
        if not recovery.recovered:
            await self._end(conn, sub, "INSUFFICIENT_STATE", "publications were missed")
            return
        for entry in recovery.publications:
            frame = Publication(topic=sub.topic, offset=entry.offset, data=entry.data)
            await conn.put(TextFrame(encode(frame)))
        if not sub.ended:
            self._go_live(conn, sub, recovery.position)

    async def _unsubscribe(self, conn: Subscriber, raw: str) -> None:
        sub = self._subs.get(conn, {}).get(raw)
        if sub is None:
            raise TopicRefused(Code.NOT_SUBSCRIBED, "not subscribed", raw)
        await self._forget(conn, sub)
        await conn.put(TextFrame(encode(Unsubscribed(topic=raw))))

    async def _end(self, conn: Subscriber, sub: Subscription, code: str, reason: str) -> None:
        """The server ends a subscription, telling the client why."""
        await self._forget(conn, sub)
        if conn.offer(TextFrame(encode(Unsubscribed(topic=sub.topic, code=code, reason=reason)))):
            metrics.FRAMES_OUT.inc()

    async def _forget(self, conn: Subscriber, sub: Subscription) -> None:
        """Remove a subscription everywhere; idempotent."""
        if sub.ended:
            return
        sub.ended = True
        subs = self._subs.get(conn)
        if subs is not None and subs.get(sub.topic) is sub:
            del subs[sub.topic]
        with contextlib.suppress(redis.RedisError, OSError):
            await self._fanout.leave(conn, (sub.channel,))
        if sub.present:
            sub.present = False
            try:
                await self.topics.store.presence_remove(sub.topic, conn.conn_id)
                if sub.grant.namespace.join_leave:
                    await self._announce(
                        sub.topic, Leave(sub.topic, str(conn.user_id), conn.session_key)
                    )
            except (redis.RedisError, OSError) as exc:
                # The entry expires by itself within two heartbeats.
                log.warning("presence removal failed", extra={"error": repr(exc)})

    async def _refresh(self, conn: Subscriber, frame: SubRefresh) -> None:
        sub = self._subs.get(conn, {}).get(frame.topic)
        if sub is None:
            raise TopicRefused(Code.NOT_SUBSCRIBED, "not subscribed", frame.topic)
        if sub.grant.expires_at is None:
            raise TopicRefused(
                Code.TOPIC_TOKEN_INVALID, "this subscription has no token", sub.topic
            )
        expires_at = await self.topics.check_token(sub.topic, frame.token, conn.user_id)
        sub.grant = Grant(sub.grant.topic, sub.grant.namespace, expires_at)
        await conn.put(TextFrame(encode(SubRefreshed(topic=sub.topic, expires_at=expires_at))))

    async def _presence(
        self, conn: Subscriber, frame: PresenceRequest | PresenceStatsRequest
    ) -> None:
        sub = self._subs.get(conn, {}).get(frame.topic)
        if sub is not None:
            topic, namespace = sub.grant.topic, sub.grant.namespace
        else:
            grant = await self.topics.authorize(frame.topic, conn.user_id, None)
            topic, namespace = grant.topic, grant.namespace
        answer = await self.topics.presence(topic, namespace)
        if isinstance(frame, PresenceRequest):
            reply: msgspec.Struct = PresenceResult(
                topic=answer.topic, clients=answer.clients, truncated=answer.truncated
            )
        else:
            reply = PresenceStats(topic=answer.topic, clients=answer.total, users=answer.users)
        await conn.put(TextFrame(encode(reply)))

    async def _publish(self, conn: Subscriber, frame: Publish) -> None:
        topic, namespace = self.topics.resolve(frame.topic)
        name = str(topic)
        if not namespace.publish:
            raise TopicRefused(Code.PUBLISH_FORBIDDEN, "clients may not publish here", name)
        if name not in self._subs.get(conn, {}):
            raise TopicRefused(Code.PUBLISH_FORBIDDEN, "subscribe before publishing", name)
        bucket = self._buckets.get(conn)
        if bucket is None:
            settings = self._settings
            bucket = self._buckets[conn] = TokenBucket(
                settings.topic_client_publish_rate, settings.topic_client_publish_burst
            )
        if bucket.admit() is not Verdict.ACCEPT:
            # One token comes back every 1/rate seconds: `retry_after` is rounded up to 1 s.
            limited = RateLimited(
                "too many publications",
                retry_after=1 / self._settings.topic_client_publish_rate,
                details={"topic": name},
            )
            await conn.put(TextFrame(limited.frame()))
            return
        data = self.topics.encode_data(name, frame.data)
        position, _ = await self.topics.store.publish(name, namespace, data, now=time.time())
        await conn.put(TextFrame(encode(Published(name, position.offset, position.epoch))))

    # Presence.

    async def _enter_presence(self, conn: Subscriber, sub: Subscription) -> None:
        info = ClientInfo(str(conn.user_id), conn.session_key, conn.conn_id)
        try:
            new = await self.topics.store.presence_add(
                sub.topic, info, now_ms=_now_ms(), lifetime_ms=self._lifetime_ms
            )
        except (redis.RedisError, OSError) as exc:
            log.warning("presence failed", extra={"error": repr(exc)})
            return
        if sub.ended:  # unsubscribed meanwhile
            with contextlib.suppress(redis.RedisError, OSError):
                await self.topics.store.presence_remove(sub.topic, conn.conn_id)
            return
        sub.present = True
        if new and sub.grant.namespace.join_leave:
            await self._announce(sub.topic, Join(sub.topic, info.user_id, info.session_id))

    async def _announce(self, topic: str, frame: Join | Leave) -> None:
        """Publish join/leave on the topic's channel (not kept in the history)."""
        payload = encode_envelope(encode(frame), EnvelopeMeta(topic=topic, ts=time.time()))
        channel = keys.topic_channel(topic)
        with contextlib.suppress(redis.RedisError, OSError):
            if is_cluster(self._redis):
                await self._redis.spublish(channel, payload)
            else:
                await self._redis.publish(channel, payload)

    # Manager hooks.

    def deliver(self, members: Iterable[Any], meta: EnvelopeMeta, text: TextFrame) -> None:
        """A frame published on a topic channel (never waits); `text` is shared by all."""
        topic = meta.topic
        sent = 0
        for conn in members:
            sub = self._subs.get(conn, {}).get(topic or "")
            if sub is None or sub.ended:
                continue
            if meta.offset is None or meta.epoch is None:  # join / leave
                sent += conn.offer(text)
                continue
            verdict = sub.cursor.live(meta.offset, meta.epoch, text)
            if verdict is Order.DELIVER:
                sent += conn.offer(text)
            elif verdict is Order.DUPLICATE:
                metrics.DROPPED.labels("duplicate").inc()
            elif verdict is Order.GAP:
                self._start_sync(conn, sub)
        if sent:
            metrics.FRAMES_OUT.inc(sent)

    def resync(self, channels: Collection[bytes] | None) -> None:
        """The link to Redis (or one shard's) came back: publications may have been missed."""
        for conn, subs in list(self._subs.items()):
            for sub in list(subs.values()):
                if channels is not None and sub.channel not in channels:
                    continue
                if not sub.ended and sub.cursor.resync():
                    self._start_sync(conn, sub)

    async def tick(self, now: float) -> None:
        """End subscriptions whose token expired; refresh presence every half heartbeat."""
        for conn, subs in list(self._subs.items()):
            for sub in list(subs.values()):
                expires_at = sub.grant.expires_at
                if expires_at is not None and now >= expires_at and not sub.ended:
                    await self._end(conn, sub, "TOPIC_TOKEN_EXPIRED", "subscription token expired")
        if now - self._last_beat < self._beat_every:
            return
        self._last_beat = now
        present = list(self._present())
        if present:
            try:
                await self.topics.store.presence_refresh(
                    present, now_ms=_now_ms(), lifetime_ms=self._lifetime_ms
                )
            except (redis.RedisError, OSError) as exc:
                log.warning("presence heartbeat failed", extra={"error": repr(exc)})

    def _present(self) -> Iterable[tuple[str, str]]:
        for conn, subs in self._subs.items():
            for sub in subs.values():
                if sub.present:
                    yield sub.topic, conn.conn_id

    async def drop(self, conn: Subscriber) -> None:
        """The connection ended: forget its subscriptions. Idempotent."""
        subs = self._subs.pop(conn, {})
        self._buckets.pop(conn, None)
        for sub in list(subs.values()):
            await self._forget(conn, sub)

    def count(self, conn: Subscriber) -> int:
        return len(self._subs.get(conn, {}))


def _now_ms() -> int:
    return int(time.time() * 1000)
