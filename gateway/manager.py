"""The connection manager: every WebSocket this instance holds, and the seed's manager API made
correct across instances.

It ties together the registry (who is connected where, the per-session cap), the fan-out (which
channels this instance needs), and the notifications replay (resume and gap fill). Delivery of a
published frame is allocation-light: its wire bytes are built once
(`gateway.wsprotocol.TextFrame`), then each local recipient is filtered (excluded session,
duplicate or out-of-order `seq`) and handed the same frame, which `Connection.offer()` writes to
its socket at once. A frame for more than `WS_DELIVERY_CHUNK` recipients (a broadcast to 10k
connections) is handed out in chunks that yield to the event loop, and a small frame published
meanwhile is not held behind it (`gateway.delivery`): frames reach each connection in publish
order, and no fan-out stalls the loop or the other connections for long.

Notification ordering per connection is decided by `gateway.ordering` (no I/O there: this module
acts on its answers — deliver, hold for the running replay, drop a duplicate, fetch the page after
seq N). Frames are lost only when the pub/sub link drops, and then every user held is caught up by
replay once the link is back. So each connection sees every notification once, in seq order,
whatever the interleaving of replay, live traffic, Redis reconnects and client resumes.

Connection objects are frozen out of the garbage collector's sight at the end of the first
collection after they were created (`gateway.heap`), so collections while clients connect do not
walk every open connection.

A closed connection is forgotten at once (no frame is routed to it any more); the rest of its
leaving — topic subscriptions, the UNSUBSCRIBE of channels nobody here needs, the registry
detach — is finished by one task, `CLOSE_SLICE` connections per event-loop turn, so that
thousands of clients closing together do not hold the loop for the whole burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator
from typing import Any
from uuid import UUID

import msgspec
import redis.asyncio as redis

from gateway import frames, metrics
from gateway.batch import GroupCommit
from gateway.chat import ClaimOutcome, claim_sessions
from gateway.connection import Connection
from gateway.delivery import OrderedDelivery
from gateway.fanout import FanoutUnavailable, create_fanout
from gateway.heap import HeapFreezer
from gateway.limits import UserRateLimit
from gateway.ordering import Action, Replay
from gateway.registry import (
    OWNER_UNCONFIRMED,
    SESSION_FULL,
    USER_FULL,
    Attach,
    create_registry,
)
from gateway.replay import LATEST, MAX_ASKS, ReplayClient, ReplayError
from gateway.state import GatewayState
from gateway.subscriptions import TopicHub
from gateway.timers import Due, due
from gateway.topics import Topics
from gateway.wsprotocol import TextFrame
from shared import keys, publish
from shared.backoff import Backoff
from shared.errors import Refused, Unavailable
from shared.topic_store import TopicStore
from shared.wire import (
    ConnectionEstablished,
    ConnectionEstablishedData,
    EnvelopeMeta,
    encode,
    utc_now_iso,
)

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 5.0
# Gap fills running at once after a Redis reconnect: as many as one batched replay call asks
# for (`gateway.replay`), so thousands of users' gap fills take tens of calls, not thousands.
REPLAY_CONCURRENCY = MAX_ASKS
DRAIN_TIMEOUT = 5.0
OWNER_CACHE_SIZE = 100_000  # sessions whose owner this instance remembers
OWNER_TTL = 30 * 86400  # seconds Redis remembers a session's owner (then agent_svc is asked again)
FREEZE_STEP = 1000  # closes before the frozen heap is collected, at least (gateway.heap)
# Closed connections whose leaving (topics, fan-out, registry) is finished per event-loop turn:
# bounds the loop's stall when thousands close at once (docs/decisions.md, "Connections end in
# slices").
CLOSE_SLICE = 100
WATCH_SLICE = 2000  # connections whose timers the watch round checks per event-loop turn
_USER_CHANNEL_PREFIX = b"ch:user:"

Frame = bytes | msgspec.Struct | dict[str, object]


class ConnectionManager:
    """Owns this instance's connections. Create in the lifespan, `start()`, `stop()`."""

    def __init__(
        self,
        state: GatewayState,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`monotonic`, `wall` and `sleep` are the watch loop's clocks (tests pass fake ones)."""
        settings, redis_client = state.settings, state.redis
        notifications, agent = state.upstreams["notifications"], state.upstreams["agent"]
        self.settings = settings
        self.state = state
        self._monotonic, self._wall, self._sleep = monotonic, wall, sleep
        self.instance_id = uuid.uuid4().hex[:12]
        self.connections: dict[str, Connection] = {}
        self.draining = False
        self.redis = redis_client
        self._agent = agent
        self._registry = create_registry(
            redis_client, self.instance_id, settings.ws_heartbeat_interval
        )
        self._replay = ReplayClient(notifications, settings.internal_token, self._spawn)
        self.user_rate = UserRateLimit(redis_client, settings.ws_user_rate_limit)
        self._everyone: set[Connection] = set()
        self._fanout = create_fanout(
            redis_client,
            settings.redis_url,
            self._everyone,
            self._deliver,
            self._resync,
            ping_interval=min(5.0, settings.ws_heartbeat_interval),
        )
        self._ids = itertools.count(1)
        # Closed connections not yet detached, oldest first, with the future their
        # `disconnect()` waits on (None: `end()`, whose slot is released once detached).
        self._closing: deque[tuple[Connection, asyncio.Future[None] | None]] = deque()
        self._ender: asyncio.Task[None] | None = None
        self._attaches: GroupCommit[Attach, int] = GroupCommit(
            self._registry.attach_many, self._spawn
        )
        # The seqs of users whose connections are being set up, read together (gateway.batch).
        self._seqs: GroupCommit[UUID, int | None] = GroupCommit(self._read_seqs, self._spawn)
        self._new_seqs: GroupCommit[tuple[UUID, int], None] = GroupCommit(
            self._store_seqs, self._spawn
        )
        self._new_owners: GroupCommit[tuple[UUID, UUID], None] = GroupCommit(
            self._store_owners, self._spawn
        )
        # Sessions claimed for connections being admitted now, in one request (gateway.batch).
        self._claims: GroupCommit[tuple[UUID, UUID], ClaimOutcome] = GroupCommit(
            self._claim_many, self._spawn
        )
        self._owners: dict[UUID, UUID] = {}
        self._slots = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replay_slots = asyncio.Semaphore(REPLAY_CONCURRENCY)
        self._empty = asyncio.Event()
        self._detaching = 0
        self._heap = HeapFreezer(FREEZE_STEP)
        self._delivery: OrderedDelivery[Connection, TextFrame] = OrderedDelivery(
            self._offer, settings.ws_delivery_chunk, self._spawn
        )
        # Topic subscriptions ride on the same fan-out (one channel per topic).
        self.topics = TopicHub(
            Topics(settings, TopicStore(redis_client), state.verifier),
            self._fanout,
            redis_client,
            settings.ws_heartbeat_interval,
        )

    # Lifecycle.

    async def start(self) -> None:
        try:
            await self._registry.load()
        except (redis.RedisError, OSError) as exc:
            log.warning("registry scripts not loaded", extra={"error": repr(exc)})
        await self._fanout.start()
        self._heap.install()
        self._spawn(self._heartbeat())
        self._spawn(self._watch())

    async def drain(self) -> None:
        """Graceful shutdown, first half: refuse newcomers, close every connection with 1012
        and wait (bounded) until their handlers have deregistered them."""
        self.draining = True
        held = list(self.connections.values())
        if not held and not self._detaching:
            return
        self._empty.clear()
        await asyncio.gather(*(c.close(1012, "server restarting: reconnect") for c in held))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self._empty.wait()

    async def stop(self) -> None:
        """Second half: stop background work, remove this instance from the registry."""
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._heap.remove()
        await self.topics.stop()
        await self._fanout.stop()
        with contextlib.suppress(redis.RedisError, OSError):
            await self._registry.leave()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def close_later(self, conn: Connection, code: int, reason: str) -> None:
        """Close from synchronous code (the fan-out path must never wait)."""
        self._spawn(conn.close(code, reason))

    # Admission.

    def reserve(self) -> None:
        """Take one of the instance's `WS_MAX_CONNECTIONS` slots; `release_slot()` it after."""
        if self.draining:
            raise Refused(1012, "server restarting: reconnect")
        if self._slots >= self.settings.ws_max_connections:
            raise Refused(1013, "server at capacity: try again later")
        self._slots += 1

    def release_slot(self) -> None:
        self._slots -= 1

    def new_connection_id(self) -> str:
        return f"{self.instance_id}:{next(self._ids):x}"

    async def claim(self, session_id: UUID, user_id: UUID) -> None:
        """Refuse (1008) a session this instance already knows belongs to another user; awaits
        nothing (a coroutine for the endpoint, which awaits it before `connect()`).

        Everything else is decided by `connect()`, before anything is registered or sent: a
        session never changes owner (none is ever deleted), so a positive answer of agent_svc
        (durable) is remembered in this instance (bounded) and in Redis for every gateway
        (`ws:owner:{session_id}`, written only after agent_svc said yes). A client reconnecting
        to this instance costs no check; one reconnecting to another instance — all the clients
        of a gateway that died — has the remembered owner checked by the registry's attach
        script, in the same round trip. Redis only ever confirms: an absent or different owner
        asks agent_svc, which decides.
        """
        known = self._owners.get(session_id)
        if known is not None and known != user_id:
            raise Refused(1008, "session belongs to another user")

    async def _confirm_owner(self, session_id: UUID, user_id: UUID) -> None:
        """Ask agent_svc to claim the session for the user (durably), together with the other
        connections asking now (gateway.batch); remember a yes in Redis. Raises `Refused`."""
        try:
            status = (await self._claims.submit((session_id, user_id))).status
        except Unavailable:
            status = "unavailable"
        if status == "forbidden":
            raise Refused(1008, "session belongs to another user")
        if status == "limited":
            raise Refused(1013, "too many new sessions: try again later")
        if status not in ("created", "owned"):
            raise Refused(1013, "session service unavailable: try again later")
        with contextlib.suppress(redis.RedisError, OSError):
            await self._new_owners.submit((session_id, user_id))

    async def _claim_many(self, claims: list[tuple[UUID, UUID]]) -> list[ClaimOutcome]:
        return await claim_sessions(self._agent, self.settings, claims)

    async def _store_owners(self, owners: list[tuple[UUID, UUID]]) -> list[None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id, user_id in owners:
                pipe.set(keys.session_owner(session_id), str(user_id), ex=OWNER_TTL)
            await pipe.execute()
        return [None] * len(owners)

    def _remember_owner(self, session_id: UUID, user_id: UUID) -> None:
        if len(self._owners) >= OWNER_CACHE_SIZE:
            del self._owners[next(iter(self._owners))]  # oldest first
        self._owners[session_id] = user_id

    async def _attach(self, conn: Connection, owner_check: bool) -> int:
        settings = self.settings
        entry = Attach(
            conn.conn_id,
            conn.session_id,
            conn.user_id,
            settings.ws_max_connections_per_session,
            settings.ws_max_connections_per_user,
            owner_check,
        )
        try:
            # Batched with the other connections being admitted now (gateway.batch).
            return await self._attaches.submit(entry)
        except (redis.RedisError, OSError):
            raise Refused(1013, "registry unavailable: try again later") from None

    async def _admit(self, conn: Connection) -> None:
        """Register the connection if its user owns its session (see `claim()`); raises
        `Refused` — and then nothing is registered."""
        session_id, user_id = conn.session_id, conn.user_id
        known = self._owners.get(session_id) == user_id
        attached = await self._attach(conn, owner_check=not known)
        if attached == OWNER_UNCONFIRMED:
            await self._confirm_owner(session_id, user_id)
            attached = await self._attach(conn, owner_check=False)
        if attached == SESSION_FULL:
            raise Refused(1013, "too many connections for this session")
        if attached == USER_FULL:
            raise Refused(1013, "too many connections for this user")
        if not known:
            self._remember_owner(session_id, user_id)

    # The seed's manager API.

    async def connect(self, conn: Connection, last_seq: int | None) -> None:
        """Check the session's owner and register (`_admit`), subscribe, then greet and replay
        (resume), or take the seq baseline and greet; raises `Refused`. Whatever happens, call
        `disconnect(conn)` afterwards."""
        await self._admit(conn)
        self.connections[conn.conn_id] = conn
        metrics.OPEN_CONNECTIONS.inc()
        self._heap.opened()
        greeting = ConnectionEstablished(
            ConnectionEstablishedData(
                session_id=conn.session_key, user_id=str(conn.user_id), connected_at=utc_now_iso()
            )
        )
        # The greeting is queued first, but the writer starts only once Redis confirmed the
        # subscriptions: a client told "established" receives everything published after.
        conn.offer(TextFrame(encode(greeting)))
        metrics.FRAMES_OUT.inc()
        self._everyone.add(conn)
        try:
            await self._fanout.join(conn, conn.channels, SUBSCRIBE_TIMEOUT)
        except FanoutUnavailable:
            raise Refused(1013, "fan-out unavailable: try again later") from None
        # From here every notification published reaches `conn` live (held until it is live),
        # so a fresh connection's baseline read now from Redis (`publish.latest_seq`) misses
        # nothing published after the greeting. Read before subscribing, it would: a frame
        # published in between would be neither held nor replayed.
        if last_seq is not None:
            # A resume always asks the notifications service, the authority: Redis's seq can be
            # rolled back by a restart or failover that lost its last writes, and a client
            # resuming from exactly the rolled-back seq would then skip, for good, what was
            # published after it (docs/decisions.md, "The connect path's CPU").
            conn.start_writer()  # the replay follows the greeting through the queue
            try:
                await self._catch_up([conn], last_seq)
            except ReplayError as exc:
                log.warning("resume failed", extra={"error": str(exc)})
                raise Refused(1013, "notifications unavailable: reconnect with last_seq") from None
            return
        # A fresh connection gets what is created after its greeting: the baseline is taken
        # before the writer sends the greeting, after the subscription is in place.
        baseline = self._sibling_baseline(conn)
        if baseline is None:
            baseline = await self._stored_seq(conn.user_id)
        fetched = baseline is None
        if baseline is None:
            try:
                baseline = (await self._replay.page(conn.user_id, LATEST)).last_seq
            except ReplayError as exc:
                log.warning("no seq baseline", extra={"error": str(exc)})
        conn.start_writer()
        if conn.order.start(baseline):
            # Created and published while the baseline was fetched: replay past it.
            self._spawn(self._gap_fill([conn]))
        if fetched and baseline is not None:
            # The user's highest committed seq: the next fresh connection reads it from Redis.
            with contextlib.suppress(redis.RedisError, OSError):
                await self._new_seqs.submit((conn.user_id, baseline))

    async def _stored_seq(self, user_id: UUID) -> int | None:
        """The user's latest seq in Redis; None when Redis does not know it (or fails: the
        notifications service answers instead)."""
        try:
            return await self._seqs.submit(user_id)
        except (redis.RedisError, OSError, ValueError):
            return None

    async def _read_seqs(self, user_ids: list[UUID]) -> list[int | None]:
        return await publish.latest_seqs(self.redis, user_ids)

    async def _store_seqs(self, seqs: list[tuple[UUID, int]]) -> list[None]:
        await publish.remember_seqs(self.redis, seqs)
        return [None] * len(seqs)

    def _sibling_baseline(self, conn: Connection) -> int | None:
        """The seq baseline of a live sibling (same user, this instance), saving a round trip to
        the notifications service. Sound because both are routed by the same subscription: every
        notification dispatched before `conn` joined reached the sibling, every later one
        reaches both."""
        for sibling in self._fanout.routes.get(conn.channels[0], ()):
            if sibling is not conn and (settled := sibling.order.settled) is not None:
                return settled
        return None

    async def disconnect(self, conn: Connection) -> None:
        """Forget the connection everywhere; returns once it is detached from the registry.
        Idempotent."""
        if not self._forget(conn):
            return
        done = asyncio.get_running_loop().create_future()
        self._closing.append((conn, done))
        self._start_ending()
        await asyncio.shield(done)

    def end(self, conn: Connection) -> None:
        """`disconnect()` without waiting, for a connection that ends itself from a protocol
        callback; its instance slot is released once it is detached (`release_slot()`)."""
        if not self._forget(conn):
            self.release_slot()
            return
        self._closing.append((conn, None))
        self._start_ending()

    def _forget(self, conn: Connection) -> bool:
        """The immediate part of a disconnect: no frame is routed to `conn` from now on (nor does
        a heartbeat refresh it); False if it was already forgotten."""
        if self.connections.pop(conn.conn_id, None) is None:
            return False
        metrics.OPEN_CONNECTIONS.dec()
        self._everyone.discard(conn)
        self._fanout.forget(conn, conn.channels)
        self._detaching += 1
        return True

    def _start_ending(self) -> None:
        if self._ender is None:
            self._ender = self._spawn(self._end_closed())

    async def _end_closed(self) -> None:
        """Finish the closed connections' leaving in order, `CLOSE_SLICE` per event-loop turn:
        after a mass disconnect thousands are closed within a few turns, and finishing them all
        at once held the loop (and every other connection) for the whole burst. Each slice
        costs one UNSUBSCRIBE and one detach script call. Cancelled (`stop()`), what is left is
        given up: `stop()` removes this instance's registry entries itself."""
        closing = self._closing
        try:
            while closing:
                ended = [closing.popleft() for _ in range(min(CLOSE_SLICE, len(closing)))]
                try:
                    await self._leave([conn for conn, _ in ended])
                finally:
                    self._ended(ended)
                await asyncio.sleep(0)  # the next slice waits for the loop's other work
        finally:
            self._ender = None
            if closing:
                left = list(closing)
                closing.clear()
                self._ended(left)

    async def _leave(self, conns: list[Connection]) -> None:
        """Drop the connections' topic subscriptions, unsubscribe the channels nobody here needs
        any more, detach them from the registry (one script call). Failures are logged: the
        registry heals itself (`stop()` removes this instance's entries, the others' sweep or
        the keys' expiry the rest)."""
        for conn in conns:
            try:
                await self.topics.drop(conn)
            except (redis.RedisError, OSError) as exc:
                log.warning("topic leave failed", extra={"error": repr(exc)})
        try:
            await self._fanout.release()
        except (redis.RedisError, OSError) as exc:
            log.warning("fan-out leave failed", extra={"error": repr(exc)})
        held = [(conn.conn_id, conn.session_key, str(conn.user_id)) for conn in conns]
        try:
            await self._registry.detach_many(held)
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "registry detach failed", extra={"error": repr(exc), "connections": len(held)}
            )

    def _ended(self, ended: list[tuple[Connection, asyncio.Future[None] | None]]) -> None:
        for _, done in ended:
            # Counted once detached: until then its objects are alive, and a mass disconnect
            # must not look to the heap freezer like frozen garbage.
            self._heap.closed()
            if done is None:
                self.release_slot()
            elif not done.done():
                done.set_result(None)
        self._detaching -= len(ended)
        if not self.connections and not self._detaching:
            self._empty.set()

    async def send_to_session(self, session_id: UUID | str, frame: Frame) -> int:
        """Publish to every connection of the session on any instance; returns how many
        instances received it."""
        return await publish.to_session(self.redis, session_id, frame)

    async def broadcast(self, frame: Frame, exclude_session: UUID | str | None = None) -> int:
        return await publish.to_everyone(self.redis, frame, exclude_session=exclude_session)

    async def is_session_connected(self, session_id: UUID | str) -> bool:
        return await self._registry.session_count(session_id) > 0

    async def get_active_sessions(self) -> list[UUID]:
        return await self._registry.active_sessions()

    async def get_connection_count(self, session_id: UUID | str | None = None) -> int:
        """Live connections of one session, or of the whole cluster."""
        if session_id is not None:
            return await self._registry.session_count(session_id)
        return await self._registry.connection_count()

    # Delivery (called by the fan-out reader, synchronously, in the order Redis sent frames).

    def _deliver(self, members: Collection[Connection], meta: EnvelopeMeta, payload: bytes) -> None:
        """Send the frame `payload` to `members` in publish order per connection
        (`gateway.delivery`). Never waits. The frame is put on the wire format once, here."""
        self._delivery.deliver(members, meta, TextFrame(payload))

    def _offer(self, members: Iterable[Connection], meta: EnvelopeMeta, frame: TextFrame) -> None:
        if meta.topic is not None:
            self.topics.deliver(members, meta, frame)
            return
        seq, exclude = meta.seq, meta.exclude_session
        deliver = Action.DELIVER  # an enum member lookup costs ~100 ns: once, not per recipient
        sent = 0
        for conn in members:
            if exclude is not None and conn.session_key == exclude:
                continue
            if seq is not None:
                action = conn.order.live(seq)
                if action is not deliver:
                    if action is Action.DROP:
                        metrics.DROPPED.labels("duplicate").inc()
                    continue
            sent += conn.offer(frame)
        if sent:
            metrics.FRAMES_OUT.inc(sent)

    def _resync(self, channels: Collection[bytes] | None) -> None:
        """Redis came back (on a cluster: the shard of `channels`; None: every channel): replay,
        per user, what was published while the link was down; topic subscriptions catch up
        from their history."""
        self.topics.resync(channels)
        for channel, members in list(self._fanout.routes.items()):
            if not channel.startswith(_USER_CHANNEL_PREFIX):
                continue
            if channels is not None and channel not in channels:
                continue
            idle = [c for c in members if c.order.resync()]
            if idle:
                self._spawn(self._gap_fill(idle))

    async def _gap_fill(self, conns: list[Connection]) -> None:
        """Replay into `conns` (one user's, all `replaying`), retrying with backoff until it
        works or they close."""
        backoff = Backoff(base=0.2, maximum=5.0)
        async with self._replay_slots:
            while True:
                live = [c for c in conns if c.close_code is None]
                if not live:
                    return
                known = [s for c in live if (s := c.order.last_seq) is not None]
                try:
                    await self._catch_up(live, min(known) if known else None)
                    return
                except ReplayError as exc:
                    log.warning("gap fill failed, retrying", extra={"error": str(exc)})
                    await backoff.sleep()

    async def _catch_up(self, conns: list[Connection], after: int | None) -> None:
        """Deliver the user's notifications after `after` (None: only take the current seq as
        baseline) to `conns`, all `replaying`, then switch them to live. Raises `ReplayError`."""
        user_id = conns[0].user_id
        replay = Replay([conn.order for conn in conns], after)
        while True:
            cursor = replay.cursor
            page = await self._replay.page(user_id, LATEST if cursor is None else cursor)
            replay.page(page.last_seq)
            for seq, text in page.frames:
                frame = TextFrame.of(text)
                for conn in conns:
                    if conn.close_code is None and replay.offer(conn.order, seq):
                        await conn.put(frame)
                        metrics.GAP_FILLS.inc()
                replay.passed(seq)
            # No await between this check and the switch to live (inside `finished()`).
            if replay.finished(page.has_more, bool(page.frames)):
                log.debug("caught up", extra={"user": str(user_id), "seq": replay.cursor})
                return

    # Timers: one loop per instance, not one per connection.

    async def _heartbeat(self) -> None:
        interval = self.settings.ws_heartbeat_interval / 2
        while True:
            try:
                await self._beat()
            except (redis.RedisError, OSError) as exc:
                log.warning("registry heartbeat failed", extra={"error": repr(exc)})
            await asyncio.sleep(interval)

    async def _beat(self) -> None:
        """One registry beat. It takes the tuples a chunk at a time, between its round trips:
        from a snapshot (the map changes meanwhile), leaving out what closed since it was taken,
        and dropping the snapshot when done (it holds closed connections' objects)."""
        held, connections = list(self.connections.values()), self.connections
        await self._registry.beat(
            (c.conn_id, c.session_key, str(c.user_id))
            for c in held
            if connections.get(c.conn_id) is c
        )

    async def _watch(self) -> None:
        """Idle timeout (1000), token expiry (warning, then 1008), and the heap's freezes."""
        settings = self.settings
        interval = min(1.0, settings.ws_heartbeat_interval / 2)
        while True:
            await self._sleep(interval)
            for _ in self.watch_slices():
                await asyncio.sleep(0)  # the other connections' work runs between slices
            await self.topics.tick(self._wall())

    def watch_slices(self) -> Iterator[None]:
        """One round of `_watch`, at the injected clocks' time when it starts, pausing (a
        `yield`) after every `WATCH_SLICE` connections: a whole round at 10,000 connections took
        6 ms of the loop every second. A connection that ended during a pause is skipped."""
        idle_before = self._monotonic() - self.settings.ws_connection_timeout
        now = self._wall()
        connections = self.connections
        held = list(connections.values())
        for start in range(0, len(held), WATCH_SLICE):
            if start:
                yield
            for conn in held[start : start + WATCH_SLICE]:
                if conn.close_code is not None:
                    continue
                action = due(conn.last_seen, conn.expires_at, conn.warned, idle_before, now)
                if action is Due.NOTHING or connections.get(conn.conn_id) is not conn:
                    continue
                if action is Due.IDLE:
                    self.close_later(conn, 1000, "idle timeout")
                elif action is Due.EXPIRED:
                    self.close_later(conn, 1008, "token expired")
                else:
                    conn.warned = True
                    if conn.offer(TextFrame.of(frames.token_expiring(conn.expires_at))):
                        metrics.FRAMES_OUT.inc()
        # Closed connections still being ended (`_closing`) hold their objects until detached:
        # counted as open, or a mass disconnect looks to the freezer like frozen garbage piling
        # up, and it walks the whole frozen heap (170-190 ms at 10,000, freeing nothing).
        self._heap.tick(len(self.connections) + self._detaching)
