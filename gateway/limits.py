"""Per-connection rate limiting: a token bucket with a strike count, pure and allocation-free.

`admit()` answers, for one client frame: accepted, refused (send `RATE_LIMITED`), or refused for
too long (close 1008). A client that exceeds the rate a little is slowed down; one that floods
accumulates strikes faster than accepted frames pay them back and is disconnected.
"""

from __future__ import annotations

import enum
import time


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
