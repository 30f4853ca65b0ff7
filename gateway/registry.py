"""The cross-instance connection registry in Redis: the seed's `ws:session:{id}` and
`user:sessions:{id}` sets, kept exact by every gateway and healed when one dies.

Each connection is a member `<instance>:<n>` of its session's set; the session is in its user's set
while it has at least one member. Every instance also records its own connections in
`gw:instance:{id}:conns` and beats `gw:instance:{id}` (expiring after 1.5 heartbeats). On every
beat (twice a heartbeat) each instance sweeps the instances whose beat expired and removes their
entries, so a crashed instance's connections disappear within about two heartbeats. The registry
keys also expire (three heartbeats) unless a live holder refreshes them: if every gateway dies, the
registry still empties itself.

Attaching is one Lua script: count, refuse over `WS_MAX_CONNECTIONS_PER_SESSION`, add — atomic, so
the cap holds across instances under concurrent connects. On request it first checks the session's
owner a gateway remembered in Redis (`ws:owner:{session}`, see `ConnectionManager.connect`), so a
reconnecting client's ownership check and its registration cost one round trip, and a connection
whose owner Redis does not confirm is not registered at all. Connections attaching at about the
same time share one script call (`attach_many`, batched by the manager with `gateway.batch`).

A beat refreshes the expiry of every key the instance holds, in chunks of `BEAT_CHUNK` keys per
script call with an await between chunks: with 10k connections, one pipeline of 20k PEXPIREs
blocked the event loop for about 0.9 s (building and parsing it in redis-py), which every client
of the instance felt as a stall twice a heartbeat.

On a Redis Cluster (`ClusterRegistry`, chosen by `create_registry` for a `RedisCluster` client) a
script may touch only keys of one slot, and the seed's key names carry no hash tag. The cap is a
property of one key, so the attach script touches only `ws:session:<id>` (count, refuse, add,
expire: still atomic, the cap still holds across instances); the bookkeeping on the user's set
and the instance's hash follows as single-key commands in a non-transactional pipeline (redis-py
sends each node its share). Detaching likewise: the script removes the connection and returns
what is left in the session, then the session leaves the user's set if nothing is. That last step
races with an attach of the same session on another instance (which added the session to the
user's set in between), so every beat re-adds each session the instance holds to its user's set:
a session missing from `user:sessions:<id>` is healed within one beat (half a heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from uuid import UUID

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from shared import keys
from shared.redis_client import RedisClient, is_cluster, load_scripts

log = logging.getLogger(__name__)

# KEYS[1] the instance's hash, then per connection: its session's set, its user's sessions set,
# its user's connection set, its session's remembered owner. ARGV[1] the keys' expiry (ms), then
# per connection: its id, its session id, the session cap, the user cap, the hash entry, and the
# user id to find as the session's owner ('' for no owner check). One answer per connection.
_ATTACH = """
local own, expire, answers = KEYS[1], ARGV[1], {}
for i = 0, (#KEYS - 1) / 4 - 1 do
  local k, a = 4 * i + 1, 6 * i + 1
  local session, sessions, user = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local conn, owner = ARGV[a + 1], ARGV[a + 6]
  local answer = 1
  if owner ~= '' and redis.call('GET', KEYS[k + 4]) ~= owner then
    answer = -2
  elseif redis.call('SCARD', session) >= tonumber(ARGV[a + 3]) then
    answer = 0
  elseif redis.call('SCARD', user) >= tonumber(ARGV[a + 4]) then
    answer = -1
  else
    redis.call('SADD', user, conn)
    redis.call('PEXPIRE', user, expire)
    redis.call('SADD', session, conn)
    redis.call('PEXPIRE', session, expire)
    redis.call('SADD', sessions, ARGV[a + 2])
    redis.call('PEXPIRE', sessions, expire)
    redis.call('HSET', own, conn, ARGV[a + 5])
    redis.call('PEXPIRE', own, expire)
  end
  answers[i + 1] = answer
end
return answers
"""
ATTACH_BATCH = 200  # connections per attach script call: bounds each script's time in Redis

_REFRESH = """
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return #KEYS
"""

BEAT_CHUNK = 500  # connections per round trip in a beat: bounds each synchronous stretch

# KEYS[1] the holder's hash, then per connection its session set, its user's sessions set and
# its user's connection set; ARGV per connection: its id, its session id.
_DETACH = """
for i = 0, #ARGV / 2 - 1 do
  local session, conn = KEYS[3 * i + 2], ARGV[2 * i + 1]
  redis.call('SREM', session, conn)
  redis.call('SREM', KEYS[3 * i + 4], conn)
  redis.call('HDEL', KEYS[1], conn)
  if redis.call('SCARD', session) == 0 then redis.call('SREM', KEYS[3 * i + 3], ARGV[2 * i + 2]) end
end
return #ARGV / 2
"""
DETACH_BATCH = 200  # connections per detach script call: bounds each script's time in Redis

# Cluster mode: the session's own set only (one slot).
_CLUSTER_ATTACH = """
if ARGV[7] == '1' and redis.call('GET', KEYS[5]) ~= ARGV[8] then return -2 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_CLUSTER_DETACH = """
redis.call('SREM', KEYS[1], ARGV[1])
return redis.call('SCARD', KEYS[1])
"""


class Attach(NamedTuple):
    """One connection to attach (`Registry.attach` says what each field means)."""

    conn_id: str
    session_id: UUID
    user_id: UUID
    limit: int
    user_limit: int
    owner_check: bool


# What `attach` answers.
ATTACHED, SESSION_FULL, USER_FULL, OWNER_UNCONFIRMED = 1, 0, -1, -2
NO_USER_LIMIT = 2**31


class Registry:
    """One instance's view of the registry. Methods raise `redis.RedisError` when Redis is down.

    Besides the seed's keys, `ws:user:{id}` holds the user's connection ids on every instance,
    for the per-user cap (`WS_MAX_CONNECTIONS_PER_USER`); it is kept, refreshed and swept with
    the rest."""

    def __init__(self, client: RedisClient, instance_id: str, heartbeat: float) -> None:
        self._redis = client
        self.instance_id = instance_id
        self._alive_ms = int(heartbeat * 1500)
        self._expire_ms = int(heartbeat * 3000)
        self._attach = client.register_script(_ATTACH)
        self._detach = client.register_script(_DETACH)
        self._refresh = client.register_script(_REFRESH)
        self._scripts = [self._attach, self._detach, self._refresh]
        self._own = keys.gateway_connections(instance_id)

    async def load(self) -> None:
        """Load the registry's scripts into Redis (`shared.redis_client.load_scripts`): the
        first attaches and detaches of a burst then raise no `NoScriptError` each. Raises
        `redis.RedisError` when Redis is down (the scripts are then loaded on first use)."""
        await load_scripts(self._redis, self._scripts)

    async def attach(
        self,
        conn_id: str,
        session_id: UUID,
        user_id: UUID,
        limit: int,
        user_limit: int = NO_USER_LIMIT,
        *,
        owner_check: bool = False,
    ) -> int:
        """Add a connection unless its session already has `limit` live ones (`SESSION_FULL`)
        or its user `user_limit` (`USER_FULL`); `ATTACHED` otherwise. With `owner_check`, first
        make sure Redis remembers `user_id` as the session's owner (`keys.session_owner`), and
        add nothing if not (`OWNER_UNCONFIRMED`)."""
        entry = Attach(conn_id, session_id, user_id, limit, user_limit, owner_check)
        return (await self.attach_many([entry]))[0]

    async def attach_many(self, entries: Sequence[Attach]) -> list[int]:
        """`attach` for several connections in one round trip, in order (each sees the ones
        before it: the caps hold within the batch too); one answer per entry."""
        answers: list[int] = []
        for start in range(0, len(entries), ATTACH_BATCH):
            names = [self._own]
            args: list[str | int] = [self._expire_ms]
            for e in entries[start : start + ATTACH_BATCH]:
                names += (
                    keys.ws_session(e.session_id),
                    keys.user_sessions(e.user_id),
                    keys.ws_user(e.user_id),
                    keys.session_owner(e.session_id),
                )
                args += (
                    e.conn_id,
                    str(e.session_id),
                    e.limit,
                    e.user_limit,
                    f"{e.session_id} {e.user_id}",
                    str(e.user_id) if e.owner_check else "",
                )
            answers += (int(answer) for answer in await self._attach(keys=names, args=args))
        return answers

    async def detach(self, conn_id: str, session_id: UUID | str, user_id: UUID | str) -> None:
        """Remove a connection; idempotent."""
        await self.detach_many([(conn_id, str(session_id), str(user_id))])

    async def detach_many(self, held: list[tuple[str, str, str]]) -> None:
        """Remove connections (connection id, session id, user id) of this instance, in one
        round trip per `DETACH_BATCH`; idempotent."""
        await self._remove(held, self._own)

    async def _remove(self, held: list[tuple[str, str, str]], own: str) -> None:
        """Remove connections held by the instance whose hash is `own`."""
        for start in range(0, len(held), DETACH_BATCH):
            chunk = held[start : start + DETACH_BATCH]
            names = [own]
            for _, session_id, user_id in chunk:
                names += (
                    keys.ws_session(session_id),
                    keys.user_sessions(user_id),
                    keys.ws_user(user_id),
                )
            await self._detach(
                keys=names,
                args=[a for conn_id, session_id, _ in chunk for a in (conn_id, session_id)],
            )

    async def _refresh_expiry(self, held: list[tuple[str, str, str]]) -> None:
        """Push back the expiry of the registry keys of `held` (one beat's chunk)."""
        names = {keys.ws_session(session_id) for _, session_id, _ in held}
        names.update(keys.user_sessions(user_id) for _, _, user_id in held)
        names.update(keys.ws_user(user_id) for _, _, user_id in held)
        await self._refresh(keys=list(names), args=[self._expire_ms])

    async def beat(self, held: Iterable[tuple[str, str, str]]) -> None:
        """Prove this instance alive, refresh the expiry of what it holds, sweep dead instances.

        `held` is (connection id, session id, user id) for every local connection. If this
        instance had been presumed dead (its beat expired, e.g. after a long stall) and swept, its
        entries are written back. `held` is consumed `BEAT_CHUNK` at a time, between the round
        trips: at 10,000 connections building every tuple at once held the loop over 20 ms.
        """
        pending = iter(held)
        was_alive = await self._redis.set(
            keys.gateway_alive(self.instance_id), b"1", px=self._alive_ms, get=True
        )
        await self._redis.sadd(keys.GATEWAY_INSTANCES, self.instance_id)
        while chunk := list(itertools.islice(pending, BEAT_CHUNK)):
            if was_alive is None:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for conn_id, session_id, user_id in chunk:
                        pipe.sadd(keys.ws_session(session_id), conn_id)
                        pipe.sadd(keys.user_sessions(user_id), session_id)
                        pipe.sadd(keys.ws_user(user_id), conn_id)
                        pipe.hset(self._own, conn_id, f"{session_id} {user_id}")
                    await pipe.execute()
            await self._refresh_expiry(chunk)
        await self._redis.pexpire(self._own, self._expire_ms)
        await self.sweep()

    async def sweep(self) -> None:
        """Remove the entries of every instance whose beat has expired; idempotent, and safe to
        run from several instances at once."""
        for raw in await self._redis.smembers(keys.GATEWAY_INSTANCES):
            instance = _text(raw)
            if instance == self.instance_id:
                continue
            if await self._redis.exists(keys.gateway_alive(instance)):
                continue
            await self._forget(instance)

    async def _forget(self, instance: str) -> None:
        own = keys.gateway_connections(instance)
        entries = await self._redis.hgetall(own)
        held = []
        for conn_id, value in entries.items():
            session_id, _, user_id = _text(value).partition(" ")
            held.append((_text(conn_id), session_id, user_id))
        await self._remove(held, own)
        await self._redis.srem(keys.GATEWAY_INSTANCES, instance)
        if entries:
            log.info("swept dead gateway", extra={"instance": instance, "entries": len(entries)})

    async def leave(self) -> None:
        """Remove this instance and whatever it still holds (graceful shutdown)."""
        await self._forget(self.instance_id)
        await self._redis.delete(keys.gateway_alive(self.instance_id))

    async def session_count(self, session_id: UUID | str) -> int:
        return int(await self._redis.scard(keys.ws_session(session_id)))

    async def active_sessions(self) -> list[UUID]:
        """Every session with a live connection on any instance (a SCAN, of every primary in a
        cluster: for operators, not for hot paths)."""
        found: list[UUID] = []
        async for key in self._redis.scan_iter(match=keys.ws_session("*"), count=1000):
            found.append(UUID(key.decode().rsplit(":", 1)[1]))
        return found

    async def connection_count(self) -> int:
        """Live connections across every instance."""
        total = 0
        for raw in await self._redis.smembers(keys.GATEWAY_INSTANCES):
            total += int(await self._redis.hlen(keys.gateway_connections(_text(raw))))
        return total


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ClusterRegistry(Registry):
    """The registry on a Redis Cluster: every script and transaction within one slot (see the
    module docstring for what that changes and how a beat heals it)."""

    def __init__(self, client: RedisCluster, instance_id: str, heartbeat: float) -> None:
        super().__init__(client, instance_id, heartbeat)
        self._cluster = client
        self._attach_session = client.register_script(_CLUSTER_ATTACH)
        self._detach_session = client.register_script(_CLUSTER_DETACH)
        self._scripts += [self._attach_session, self._detach_session]

    async def attach(
        self,
        conn_id: str,
        session_id: UUID,
        user_id: UUID,
        limit: int,
        user_limit: int = NO_USER_LIMIT,
        *,
        owner_check: bool = False,
    ) -> int:
        """As `Registry.attach`; the owner is read first, on its own (another slot)."""
        if owner_check and _text(
            await self._cluster.get(keys.session_owner(session_id)) or b""
        ) != str(user_id):
            return OWNER_UNCONFIRMED
        added = await self._attach_session(
            keys=[keys.ws_session(session_id)], args=[conn_id, limit, self._expire_ms]
        )
        if not added:
            return SESSION_FULL
        user_added = await self._attach_session(
            keys=[keys.ws_user(user_id)], args=[conn_id, user_limit, self._expire_ms]
        )
        if not user_added:
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.srem(keys.ws_session(session_id), conn_id)
            return USER_FULL
        try:
            async with self._cluster.pipeline(transaction=False) as pipe:
                pipe.sadd(keys.user_sessions(user_id), str(session_id))
                pipe.pexpire(keys.user_sessions(user_id), self._expire_ms)
                pipe.hset(self._own, conn_id, f"{session_id} {user_id}")
                pipe.pexpire(self._own, self._expire_ms)
                await pipe.execute()
        except BaseException:
            # The caller refuses the connection and will not detach it: give its place back
            # (the session's other connections keep the key alive, so it would never expire).
            with contextlib.suppress(RedisError, OSError):
                await self._cluster.srem(keys.ws_session(session_id), conn_id)
                await self._cluster.srem(keys.ws_user(user_id), conn_id)
            raise
        return ATTACHED

    async def attach_many(self, entries: Sequence[Attach]) -> list[int]:
        # Each connection's keys are in slots of their own: `attach` each, in order.
        return [
            await self.attach(
                e.conn_id,
                e.session_id,
                e.user_id,
                e.limit,
                e.user_limit,
                owner_check=e.owner_check,
            )
            for e in entries
        ]

    async def _remove(self, held: list[tuple[str, str, str]], own: str) -> None:
        # Each connection's keys are in slots of their own: one script and pipeline each, a
        # bounded number at once.
        for start in range(0, len(held), DETACH_BATCH):
            chunk = held[start : start + DETACH_BATCH]
            await asyncio.gather(*(self._remove_one(*entry, own) for entry in chunk))

    async def _remove_one(self, conn_id: str, session_id: str, user_id: str, own: str) -> None:
        left = await self._detach_session(keys=[keys.ws_session(session_id)], args=[conn_id])
        async with self._cluster.pipeline(transaction=False) as pipe:
            pipe.hdel(own, conn_id)
            pipe.srem(keys.ws_user(user_id), conn_id)
            if not left:
                pipe.srem(keys.user_sessions(user_id), session_id)
            await pipe.execute()

    async def _refresh_expiry(self, held: list[tuple[str, str, str]]) -> None:
        # Also re-adds each held session to its user's set: a detach elsewhere may have removed
        # it while this instance attached to the same session.
        sessions = {(session_id, user_id) for _, session_id, user_id in held}
        async with self._cluster.pipeline(transaction=False) as pipe:
            for conn_id, _, user_id in held:
                pipe.sadd(keys.ws_user(user_id), conn_id)
            for user_id in {user_id for _, _, user_id in held}:
                pipe.pexpire(keys.ws_user(user_id), self._expire_ms)
            for session_id, user_id in sessions:
                pipe.sadd(keys.user_sessions(user_id), session_id)
                pipe.pexpire(keys.ws_session(session_id), self._expire_ms)
                pipe.pexpire(keys.user_sessions(user_id), self._expire_ms)
            await pipe.execute()


def create_registry(client: RedisClient, instance_id: str, heartbeat: float) -> Registry:
    """The registry implementation for `client`: `ClusterRegistry` on a Redis Cluster."""
    if is_cluster(client):
        return ClusterRegistry(client, instance_id, heartbeat)
    return Registry(client, instance_id, heartbeat)
