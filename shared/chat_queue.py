"""Fair admission of chat questions to the workers: per-user queues in front of `chat:requests`.

Workers take requests from the one stream `chat:requests` in order. Left alone, a user who asks
eight questions puts eight entries in front of everybody else's (issue #13: another user's first
answer started after 20 s instead of 0.07 s). So a user may have at most
`CHAT_MAX_STREAMING_PER_USER` requests in the stream (waiting or being answered), tracked in
`chat:inflight:{chat:requests}:<user>` (a sorted set of message ids scored by a lease deadline);
further questions wait in the user's own list `chat:queue:{chat:requests}:<user>` (at most
`CHAT_MAX_QUEUED_PER_USER`; one more is refused with `CHAT_QUEUE_FULL`). When an answer finishes,
the worker moves the user's next question to the *end* of the stream. With one request per user
in the stream, the stream is a round-robin over the users with questions: a newcomer's question
waits behind at most one question of each other user, so one user's backlog delays another
user's first token by at most one answer slot. (With a per-user cap of N, by at most N.)

Every step is one Lua script over the stream and the user's two keys, which share a hash slot
(the `{chat:requests}` tag), so it is atomic on one Redis and on a Redis Cluster. Time is Redis's
(`TIME`). The lease (`LEASE_MS`, refreshed by the answering worker's heartbeat) makes a request
that vanished without finishing (a flushed stream, a dropped malformed entry) stop counting; an
admission also moves waiting questions into free places first, so a queue never stalls behind a
finish that never came.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from shared import keys
from shared.chat_wire import REQUEST_FIELD
from shared.redis_client import RedisClient

LEASE_MS = 15 * 60 * 1000  # a request in the stream counts for its user at most this long
QUEUE_TTL_MS = 24 * 3600 * 1000  # as long as an unanswered answer's reply stream lives

ADMITTED, REFUSED, QUEUED = 1, 0, 2

# KEYS: stream, inflight, queue. Moves waiting questions into free places (round-robin tail).
_PROMOTE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
while redis.call('ZCARD', KEYS[2]) < cap do
  local item = redis.call('LPOP', KEYS[3])
  if not item then break end
  local sp = string.find(item, ' ', 1, true)
  redis.call('XADD', KEYS[1], '*', ARGV[1], string.sub(item, sp + 1))
  redis.call('ZADD', KEYS[2], now + lease, string.sub(item, 1, sp - 1))
  redis.call('PEXPIRE', KEYS[2], lease)
end
"""

# ARGV: field, cap, lease, message id, request, max queued, queue ttl.
_ADMIT = (
    _PROMOTE
    + """
if redis.call('LLEN', KEYS[3]) == 0 and redis.call('ZCARD', KEYS[2]) < cap then
  redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[5])
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease)
  return 1
end
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[6]) then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[4] .. ' ' .. ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 2
"""
)

# ARGV: field, cap, lease, finished message id.
_FINISH = (
    """
redis.call('ZREM', KEYS[2], ARGV[4])
"""
    + _PROMOTE
    + """
return 1
"""
)

# ARGV: lease, message id. Pushes back the lease of a request being answered.
_TOUCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
"""


def _keys(user_id: UUID | str) -> list[str]:
    return [keys.CHAT_REQUESTS_STREAM, keys.chat_inflight(user_id), keys.chat_queue(user_id)]


async def admit(
    client: RedisClient,
    user_id: UUID | str,
    message_id: str,
    request: bytes,
    *,
    max_streaming: int,
    max_queued: int,
) -> int:
    """Put a question in the stream (`ADMITTED`), in the user's queue (`QUEUED`), or nowhere
    because the queue is full (`REFUSED`). Raises `redis.RedisError` when Redis is down."""
    k = _keys(user_id)
    admitted = await client.eval(
        _ADMIT,
        3,
        k[0],
        k[1],
        k[2],
        REQUEST_FIELD,
        max_streaming,
        LEASE_MS,
        message_id,
        request,
        max_queued,
        QUEUE_TTL_MS,
    )
    return int(admitted)


def finish(target: Any, user_id: UUID | str, message_id: str, max_streaming: int) -> Any:
    """End a request's place and move the user's next question into the stream: `EVAL` on
    `target`, a client (await the result) or a pipeline (queued with the rest)."""
    k = _keys(user_id)
    return target.eval(
        _FINISH, 3, k[0], k[1], k[2], REQUEST_FIELD, max_streaming, LEASE_MS, message_id
    )


def touch(target: Any, user_id: UUID | str, message_id: str) -> Any:
    """Push back the lease of a request being answered (`EVAL` on `target`, as `finish`)."""
    return target.eval(_TOUCH, 1, keys.chat_inflight(user_id), LEASE_MS, message_id)
