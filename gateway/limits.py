"""Rate limits on client frames: per connection, and per user across every gateway.

Per connection, `TokenBucket.admit()` answers, for one client frame: accepted, refused (send
`RATE_LIMITED`), or refused for too long (close 1008). A client that exceeds the rate a little is
slowed down; one that floods accumulates strikes faster than accepted frames pay them back and is
disconnected. It is pure and allocation-free.

Per user, `UserRateLimit` counts the frames a connection's bucket accepted in a one-second window
in Redis (`ws:rate:user:<id>`, one key: cluster-safe), so a user cannot multiply the rate by
opening many connections on many gateways. The window starts at the user's first frame; a fixed
window lets up to twice the limit through around a window's end, which is the price of one
round trip per frame. When Redis cannot answer, frames are let through (the per-connection
bucket still holds): a rate limit must not make an outage worse.
"""

from __future__ import annotations

import enum
import logging
import time
from uuid import UUID

from redis.exceptions import RedisError

from shared import keys
from shared.redis_client import RedisClient

log = logging.getLogger(__name__)

_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
WINDOW_MS = 1000


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"
    DISCONNECT = "disconnect"


class TokenBucket:
    """`rate` frames per second on average, bursts of up to `burst`.

    Every refused frame adds a strike and every accepted one removes one; more than `burst`
    strikes means the client ignores `RATE_LIMITED` and is disconnected. Not thread-safe (one per
    connection, used from its reader only).
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_strikes", "_tokens")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic() if now is None else now
        self._strikes = 0

    def admit(self, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            if self._strikes:
                self._strikes -= 1
            return Verdict.ACCEPT
        self._strikes += 1
        return Verdict.DISCONNECT if self._strikes > self._burst else Verdict.REFUSE


class UserRateLimit:
    """At most `limit` client frames per second per user, over every connection and gateway."""

    def __init__(self, client: RedisClient, limit: int) -> None:
        self._count = client.register_script(_COUNT)
        self._limit = limit

    async def admit(self, user_id: UUID) -> bool:
        """Whether one more frame of `user_id` fits in its window (True when Redis is down)."""
        try:
            count = await self._count(keys=[keys.user_rate(user_id)], args=[WINDOW_MS])
        except (RedisError, OSError) as exc:
            log.debug("user rate not checked", extra={"error": repr(exc)})
            return True
        return int(count) <= self._limit
