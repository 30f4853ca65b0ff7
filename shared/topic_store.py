"""Topics in Redis: publication with history (offset + epoch), recovery, and presence.

Modelled on Centrifuge's Redis broker. Each topic has a meta hash (`e` epoch, `s` last offset), a
stream of its last `history_size` publications (entry id = offset) expiring `history_ttl` after
the last publication, and a channel. Publishing is one Lua script — reuse the Idempotency-Key's
answer if any, else bump the offset, append to the history, remember the key, PUBLISH (SPUBLISH
on a cluster) the envelope — so offsets are gapless in publish order, and what a subscriber
receives live is exactly what the history holds. All of a topic's keys and its channel share a
hash tag (`shared.keys`), so the script runs on one cluster slot.

The epoch is a random string created with the meta hash, when the topic is first published to
or read. Whenever Redis loses the meta (a restart without persistence, eviction, or the topic
staying quiet for `history_meta_ttl`), the next use creates a new epoch and offsets start over:
a client holding the old epoch learns it cannot recover (`recovered: false`). A history that
expired or was trimmed while the meta survived is detected by the offsets it no longer holds.

Presence is per connection: a hash (connection id -> entry JSON) and a sorted set (connection id
-> expiry, Unix ms) per topic. Gateways refresh their entries every heartbeat; a reader first
drops expired ones, so a dead gateway's clients vanish once their entries expire — no cleanup
needs the dead gateway. Times are passed in (`now_ms`), never read here: tests use fake clocks.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from shared import keys
from shared.redis_client import RedisClient, is_cluster
from shared.topic_wire import ClientInfo, PublicationEntry, Since
from shared.topics import Namespace

IDEMPOTENCY_TTL = 86_400  # seconds an Idempotency-Key's answer is remembered

# KEYS: history, meta, idempotency (or "" placeholder = meta when none)
# ARGV: data, history_size, history_ttl, meta_ttl, new epoch, channel, publish command,
#       idempotency ttl ("0": none), topic as JSON string, ts
_PUBLISH = """
if ARGV[8] ~= '0' then
  local seen = redis.call('hmget', KEYS[3], 'e', 's')
  if seen[1] then return {tonumber(seen[2]), seen[1], 1} end
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  -- A new epoch: whatever history survived the meta belongs to the old one.
  epoch = ARGV[5]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[4])
if ARGV[2] ~= '0' then
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  redis.call('expire', KEYS[1], ARGV[3])
end
if ARGV[8] ~= '0' then
  redis.call('hset', KEYS[3], 'e', epoch, 's', offset)
  redis.call('expire', KEYS[3], ARGV[8])
end
local meta = '{"topic":' .. ARGV[9] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch ..
  '","ts":' .. ARGV[10] .. '}'
local frame = '{"type":"publication","topic":' .. ARGV[9] .. ',"offset":' .. offset ..
  ',"data":' .. ARGV[1] .. '}'
redis.call(ARGV[7], ARGV[6], meta .. '\\n' .. frame)
return {offset, epoch, 0}
"""

# KEYS: history, meta. ARGV: first offset wanted ("0": none), count, meta ttl, new epoch.
# Creates the epoch when there is none, so a subscriber's position is meaningful at once.
_HISTORY = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 's', 0)
  redis.call('expire', KEYS[2], ARGV[3])
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local entries = {}
if ARGV[1] ~= '0' and tonumber(ARGV[1]) <= top then
  entries = redis.call('xrange', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch, top, entries}
"""

# KEYS: presence hash, expiry zset. ARGV: conn id, entry, expiry ms, key ttl ms.
# Returns 1 when the connection was not present before (a join to announce).
_PRESENCE_ADD = """
local new = redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('pexpire', KEYS[1], ARGV[4])
redis.call('pexpire', KEYS[2], ARGV[4])
return new
"""

# KEYS: presence hash, expiry zset. ARGV: now ms. Drops expired entries, returns the rest.
_PRESENCE_GET = """
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
for _, conn in ipairs(expired) do
  redis.call('hdel', KEYS[1], conn)
end
if #expired > 0 then redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1]) end
return redis.call('hvals', KEYS[1])
"""


def new_epoch() -> str:
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a subscriber gets: the topic's position now and, when asked with `since`, the
    publications after it — all of them (`recovered`) or none."""

    position: Position
    recovered: bool
    publications: list[PublicationEntry]


_entry_encoder = msgspec.json.Encoder()
_decode_client = msgspec.json.Decoder(ClientInfo).decode


class TopicStore:
    """Topic operations over one Redis client (single server or cluster). Scripts are loaded
    lazily (EVALSHA, falling back to EVAL), so a restarted Redis needs nothing from us."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._publish_command = "spublish" if is_cluster(client) else "publish"
        self._publish = client.register_script(_PUBLISH)
        self._history = client.register_script(_HISTORY)
        self._presence_add = client.register_script(_PRESENCE_ADD)
        self._presence_get = client.register_script(_PRESENCE_GET)

    async def publish(
        self,
        topic: str,
        namespace: Namespace,
        data: bytes,
        *,
        now: float,
        idempotency_key: str | None = None,
    ) -> tuple[Position, bool]:
        """Append `data` (encoded JSON) and publish it; returns its position and whether it is
        the answer remembered for `idempotency_key` (nothing was published again).
        Raises `redis.RedisError`."""
        meta = keys.topic_meta(topic)
        idem = keys.topic_idempotency(topic, idempotency_key) if idempotency_key else meta
        size = namespace.history_size if namespace.history else 0
        result = await self._publish(
            keys=[keys.topic_history(topic), meta, idem],
            args=[
                data,
                size,
                max(1, namespace.history_ttl),
                max(namespace.history_meta_ttl, namespace.history_ttl, 1),
                new_epoch(),
                keys.topic_channel(topic),
                self._publish_command,
                IDEMPOTENCY_TTL if idempotency_key else 0,
                f'"{topic}"',  # the charset of topics needs no JSON escaping
                f"{now:.6f}",
            ],
        )
        offset, epoch, repeated = result
        return Position(int(offset), _text(epoch)), bool(repeated)

    async def recover(
        self, topic: str, namespace: Namespace, since: Since | None, limit: int
    ) -> Recovery:
        """The topic's position, and when `since` is given the publications after it (at most
        `limit`; more missed than that cannot be recovered). Raises `redis.RedisError`."""
        wanted = 0
        if since is not None and namespace.history:
            wanted = since.offset + 1
        epoch_raw, top_raw, entries = await self._history(
            keys=[keys.topic_history(topic), keys.topic_meta(topic)],
            args=[wanted, limit + 1, max(namespace.history_meta_ttl, 1), new_epoch()],
        )
        position = Position(int(top_raw), _text(epoch_raw))
        if since is None:
            return Recovery(position, True, [])
        if since.epoch != position.epoch or since.offset > position.offset:
            return Recovery(position, False, [])
        missed = position.offset - since.offset
        if missed == 0:
            return Recovery(position, True, [])
        publications = [
            PublicationEntry(int(_text(entry_id).partition("-")[0]), msgspec.Raw(fields[1]))
            for entry_id, fields in entries
        ]
        complete = (
            0 < missed <= limit
            and len(publications) >= missed
            and publications[0].offset == since.offset + 1
        )
        if not complete:
            return Recovery(position, False, [])
        return Recovery(position, True, publications[:missed])

    async def presence_add(
        self, topic: str, info: ClientInfo, *, now_ms: int, lifetime_ms: int
    ) -> bool:
        """Add or refresh a connection's presence until `now_ms + lifetime_ms`; returns whether
        it is new. Raises `redis.RedisError`."""
        new = await self._presence_add(
            keys=[keys.topic_presence(topic), keys.topic_presence_expiry(topic)],
            args=[info.conn_id, _entry_encoder.encode(info), now_ms + lifetime_ms, lifetime_ms],
        )
        return bool(new)

    async def presence_refresh(
        self, entries: Iterable[tuple[str, str]], *, now_ms: int, lifetime_ms: int
    ) -> None:
        """Extend the presence of `(topic, conn_id)` pairs (the gateway's heartbeat): one
        pipeline, split per node on a cluster. Entries already gone stay gone (`XX`)."""
        pipe = self._client.pipeline(transaction=False)
        expires = now_ms + lifetime_ms
        for topic, conn_id in entries:
            pipe.zadd(keys.topic_presence_expiry(topic), {conn_id: expires}, xx=True)
            pipe.pexpire(keys.topic_presence_expiry(topic), lifetime_ms)
            pipe.pexpire(keys.topic_presence(topic), lifetime_ms)
        await pipe.execute()

    async def presence_remove(self, topic: str, conn_id: str) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(keys.topic_presence(topic), conn_id)
        pipe.zrem(keys.topic_presence_expiry(topic), conn_id)
        await pipe.execute()

    async def presence(self, topic: str, *, now_ms: int) -> list[ClientInfo]:
        """The live presence of a topic (expired entries are dropped first)."""
        values = await self._presence_get(
            keys=[keys.topic_presence(topic), keys.topic_presence_expiry(topic)], args=[now_ms]
        )
        return sorted((_decode_client(v) for v in values), key=lambda c: c.conn_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
