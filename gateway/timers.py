"""Per-connection timers decided without I/O or a clock of their own: idle timeout, token
expiry and its advance warning. The manager's one watch loop (not one timer per connection)
reads the clocks once per round and acts on what `due()` answers, so tests drive it with any
time they like.
"""

from __future__ import annotations

import enum

EXPIRY_WARNING = 60.0  # seconds before token expiry at which `token_expiring` is sent


class Due(enum.Enum):
    """What a connection's timers ask for now."""

    NOTHING = "nothing"
    IDLE = "idle"  # close 1000 "idle timeout"
    EXPIRED = "expired"  # close 1008 "token expired"
    WARN = "warn"  # send `token_expiring` once


def due(last_seen: float, expires_at: float, warned: bool, idle_before: float, now: float) -> Due:
    """`last_seen` and `idle_before` are monotonic seconds (a frame from the client before
    `idle_before` makes it idle); `expires_at` and `now` are epoch seconds (the token's clock).
    Idleness wins over expiry, expiry over the warning; a warned connection is not warned again
    (a token refresh clears `warned`)."""
    if last_seen < idle_before:
        return Due.IDLE
    if now >= expires_at:
        return Due.EXPIRED
    if not warned and now >= expires_at - EXPIRY_WARNING:
        return Due.WARN
    return Due.NOTHING
