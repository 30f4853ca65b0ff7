"""Per-user limits counted in Redis, so they hold across every gateway and agent process.

Each limit is one small Lua script over keys of one user (one slot: they work on a Redis Cluster
too), answering "allowed" or "refused, retry after N seconds". Time inside the scripts is Redis's
own clock (`TIME`), so instances with skewed clocks agree; where a test must control time, it
gives `TokenBucket` and `DailyTokens` a clock (`HourlyCount`'s window is a Redis expiry).

- `TokenBucket`: requests per second with bursts (REST and chat requests per user).
- `HourlyCount`: events per rolling window that starts at the first event (sessions created per
  user per hour).
- `DailyTokens`: model tokens used per user per UTC day, added after each answer from the usage
  the model reported, checked before each question.

Refusals raise `shared.errors.RateLimited` with a stable code and `retry_after`; the HTTP layer
turns it into 429 + `Retry-After`, the WebSocket layer into an `error` frame. A limit that Redis
cannot check is not enforced (the request proceeds and the failure is logged): a limit must not
turn a Redis hiccup into an outage of everything it guards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from redis.exceptions import RedisError

from shared.errors import RateLimited
from shared.redis_client import RedisClient, is_cluster

log = logging.getLogger(__name__)

# KEYS[1] hash {tokens, ms}; ARGV rate/s, burst[, now ms]. Returns {allowed, ms until one token}.
_BUCKET = """
local now = tonumber(ARGV[3])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens, stamp = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, stamp = burst, now end
tokens = math.min(burst, tokens + (now - stamp) * rate / 1000)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ms', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if allowed == 1 then return {1, 0} end
return {0, math.ceil((1 - tokens) * 1000 / rate)}
"""

# KEYS[1] counter; ARGV limit, window ms. Returns {allowed, ms until the window ends}.
_WINDOW = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return {0, redis.call('PTTL', KEYS[1])} end
n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, 0}
"""


def bucket_key(user_id: UUID | str) -> str:
    return f"quota:http:{user_id}"


def sessions_key(user_id: UUID | str) -> str:
    return f"quota:sessions:{user_id}"


def tokens_key(user_id: UUID | str, day: dt.date) -> str:
    return f"quota:tokens:{user_id}:{day.isoformat()}"


class TokenBucket:
    """`rate` requests per second per user on average, bursts of `burst`. `clock` (Unix
    seconds) replaces Redis's clock; None (the default) keeps Redis's, which every process
    shares."""

    def __init__(
        self,
        client: RedisClient,
        rate: float,
        burst: int,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._script = client.register_script(_BUCKET)
        self._rate, self._burst, self._clock = rate, burst, clock

    async def take(self, user_id: UUID) -> None:
        """Take one token or raise `RateLimited` (`RATE_LIMITED`)."""
        args: list[float] = [self._rate, self._burst]
        if self._clock is not None:
            args.append(int(self._clock() * 1000))
        try:
            allowed, wait_ms = await self._script(keys=[bucket_key(user_id)], args=args)
        except (RedisError, OSError) as exc:
            log.warning("request rate not checked", extra={"error": repr(exc)})
            return
        if not int(allowed):
            raise RateLimited(
                "too many requests; slow down",
                retry_after=int(wait_ms) / 1000,
                details={"limit_per_second": self._rate, "burst": self._burst},
            )


class HourlyCount:
    """At most `limit` events per user per hour (a window opened by the user's first event)."""

    WINDOW_MS = 3600 * 1000

    def __init__(self, client: RedisClient, limit: int) -> None:
        self._client = client
        self._script = client.register_script(_WINDOW)
        self._limit = limit

    async def count_session(self, user_id: UUID) -> None:
        """Count one new session or raise `RateLimited` (`SESSION_LIMIT`)."""
        try:
            allowed, wait_ms = await self._count(user_id)
        except (RedisError, OSError) as exc:
            log.warning("session creation not counted", extra={"error": repr(exc)})
            return
        if not int(allowed):
            raise RateLimited(
                f"at most {self._limit} new sessions per hour",
                retry_after=max(1, int(wait_ms)) / 1000,
                details={"limit_per_hour": self._limit},
                code="SESSION_LIMIT",
            )

    async def count_sessions(self, user_ids: Sequence[UUID]) -> list[float | None]:
        """`count_session` for one new session of each of `user_ids` (repeats count again): None
        where counted, the seconds until the user's window ends where refused. One pipeline on
        one Redis; on a cluster (whose pipelines refuse scripts) each user's calls in turn, the
        users concurrently.
        Nothing is refused when Redis cannot count."""
        if not user_ids:
            return []
        try:
            if is_cluster(self._client):
                replies = await self._count_each(user_ids)
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    queue: Any = pipe  # typed for clients only; a script queues on a pipeline too
                    for user_id in user_ids:
                        await self._count(user_id, queue)
                    replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("session creations not counted", extra={"error": repr(exc)})
            return [None] * len(user_ids)
        return [
            None if int(allowed) else max(1, int(wait_ms)) / 1000 for allowed, wait_ms in replies
        ]

    async def _count_each(self, user_ids: Sequence[UUID]) -> list[Any]:
        """One call at a time per user (a user's refusals are their last entries, as in a
        sequence of `count_session`), the users concurrently."""
        replies: list[Any] = [None] * len(user_ids)
        positions: dict[UUID, list[int]] = {}
        for index, user_id in enumerate(user_ids):
            positions.setdefault(user_id, []).append(index)

        async def count(user_id: UUID, where: list[int]) -> None:
            for index in where:
                replies[index] = await self._count(user_id)

        await asyncio.gather(*(count(user_id, where) for user_id, where in positions.items()))
        return replies

    async def _count(self, user_id: UUID, client: Any = None) -> Any:
        """The window script for one new session; `client` a pipeline to queue it on."""
        return await self._script(
            keys=[sessions_key(user_id)], args=[self._limit, self.WINDOW_MS], client=client
        )


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DailyTokens:
    """Model tokens per user per UTC day: `add` after an answer, `check` before a question."""

    def __init__(
        self,
        client: RedisClient,
        budget: int,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self._redis, self._budget, self._clock = client, budget, clock

    async def check(self, user_id: UUID) -> None:
        """Raise `RateLimited` (`TOKEN_BUDGET_EXHAUSTED`) once today's budget is spent."""
        now = self._clock()
        try:
            raw = await self._redis.get(tokens_key(user_id, now.date()))
        except (RedisError, OSError) as exc:
            log.warning("token budget not checked", extra={"error": repr(exc)})
            return
        used = int(raw or 0)
        if used >= self._budget:
            midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
            raise RateLimited(
                "today's model token budget is spent",
                retry_after=(midnight - now).total_seconds(),
                details={"budget": self._budget, "used": used},
                code="TOKEN_BUDGET_EXHAUSTED",
            )

    async def add(self, user_id: UUID, tokens: int) -> None:
        """Count `tokens` against today's budget (kept two days, then forgotten)."""
        if tokens <= 0:
            return
        key = tokens_key(user_id, self._clock().date())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incrby(key, tokens)
            pipe.expire(key, 2 * 86400)
            await pipe.execute()
