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
the cap holds across instances under concurrent connects.

A beat refreshes the expiry of every key the instance holds, in chunks of `BEAT_CHUNK` keys per
script call with an await between chunks: with 10k connections, one pipeline of 20k PEXPIREs
blocked the event loop for about 0.9 s (building and parsing it in redis-py), which every client
of the instance felt as a stall twice a heartbeat.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from uuid import UUID

import redis.asyncio as redis

from shared import keys

log = logging.getLogger(__name__)

_ATTACH = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 1
"""

_REFRESH = """
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return #KEYS
"""

BEAT_CHUNK = 500  # connections per round trip in a beat: bounds each synchronous stretch

_DETACH = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1
"""


class Registry:
    """One instance's view of the registry. Methods raise `redis.RedisError` when Redis is down."""

    def __init__(self, client: redis.Redis, instance_id: str, heartbeat: float) -> None:
        self._redis = client
        self.instance_id = instance_id
        self._alive_ms = int(heartbeat * 1500)
        self._expire_ms = int(heartbeat * 3000)
        self._attach = client.register_script(_ATTACH)
        self._detach = client.register_script(_DETACH)
        self._refresh = client.register_script(_REFRESH)
        self._own = keys.gateway_connections(instance_id)

    async def attach(self, conn_id: str, session_id: UUID, user_id: UUID, limit: int) -> bool:
        """Add a connection unless its session already has `limit` live ones (then False)."""
        added = await self._attach(
            keys=[keys.ws_session(session_id), keys.user_sessions(user_id), self._own],
            args=[conn_id, str(session_id), limit, self._expire_ms, f"{session_id} {user_id}"],
        )
        return bool(added)

    async def detach(self, conn_id: str, session_id: UUID | str, user_id: UUID | str) -> None:
        """Remove a connection; idempotent."""
        await self._detach(
            keys=[keys.ws_session(session_id), keys.user_sessions(user_id), self._own],
            args=[conn_id, str(session_id)],
        )

    async def beat(self, held: Iterable[tuple[str, str, str]]) -> None:
        """Prove this instance alive, refresh the expiry of what it holds, sweep dead instances.

        `held` is (connection id, session id, user id) for every local connection. If this
        instance had been presumed dead (its beat expired, e.g. after a long stall) and swept, its
        entries are written back.
        """
        held = list(held)
        was_alive = await self._redis.set(
            keys.gateway_alive(self.instance_id), b"1", px=self._alive_ms, get=True
        )
        await self._redis.sadd(keys.GATEWAY_INSTANCES, self.instance_id)
        for start in range(0, len(held), BEAT_CHUNK):
            chunk = held[start : start + BEAT_CHUNK]
            if was_alive is None:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for conn_id, session_id, user_id in chunk:
                        pipe.sadd(keys.ws_session(session_id), conn_id)
                        pipe.sadd(keys.user_sessions(user_id), session_id)
                        pipe.hset(self._own, conn_id, f"{session_id} {user_id}")
                    await pipe.execute()
            names = {keys.ws_session(session_id) for _, session_id, _ in chunk}
            names.update(keys.user_sessions(user_id) for _, _, user_id in chunk)
            await self._refresh(keys=list(names), args=[self._expire_ms])
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
        for conn_id, value in entries.items():
            session_id, _, user_id = _text(value).partition(" ")
            await self._detach(
                keys=[keys.ws_session(session_id), keys.user_sessions(user_id), own],
                args=[conn_id, session_id],
            )
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
        """Every session with a live connection on any instance (a SCAN: for operators, not for
        hot paths)."""
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
