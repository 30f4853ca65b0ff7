"""The benchmark's timestamped frames: how a published frame carries its send time, and how a
receiver reads it back. Pure code, no I/O.

A benchmark frame is a real seed `notification` frame (same shape and size as production ones)
with one extra field in `data`: `"bench": "<kind>:<step>:<k>:<sent_ns>"`, where `kind` is `T`
(targeted), `B` (broadcast) or `P` (a targeted frame to the probe connection while a broadcast
runs), `step` numbers the rate step (for `P`: the frame within its broadcast), `k` numbers the
message within it (for `P`: the broadcast) and `sent_ns` is `time.monotonic_ns()` just before
PUBLISH. CLOCK_MONOTONIC is one clock for every
process on the machine, so `arrival_ns - sent_ns` is the publish-to-receive latency. Extra fields
are allowed by the wire contract, so the gateway forwards these frames like any other.
"""

from __future__ import annotations

import uuid
from typing import Final

import msgspec

from shared.wire import EnvelopeMeta, Notification, NotificationData, encode_envelope, utc_now_iso

TARGETED: Final = b"T"
BROADCAST: Final = b"B"
PROBE: Final = b"P"
_KEY: Final = b'"bench":"'
_HOLE: Final = "@@bench-mark@@"  # cannot occur in the rest of the frame


class Template:
    """A pre-encoded publish payload with a hole for the bench mark: `fill()` costs one bytes
    join per message, so the publisher spends its time publishing, not encoding."""

    __slots__ = ("head", "tail")

    def __init__(self, user_id: str | None) -> None:
        frame = Notification(
            data=NotificationData(
                id=str(uuid.uuid4()),
                title="Benchmark notification",
                content="Your weekly report is ready: 12 tasks completed, 3 due tomorrow.",
                notification_type="info",
                action={"type": "open", "url": "/reports/weekly"},
                created_at=utc_now_iso(),
            ),
            timestamp=utc_now_iso(),
        )
        builtins = msgspec.to_builtins(frame)
        builtins["data"]["bench"] = _HOLE
        encoded = msgspec.json.encode(builtins)
        payload = encode_envelope(encoded, EnvelopeMeta(user_id=user_id))
        self.head, self.tail = payload.split(_HOLE.encode())

    def fill(self, kind: bytes, step: int, k: int, sent_ns: int) -> bytes:
        return b"%s%s:%d:%d:%d%s" % (self.head, kind, step, k, sent_ns, self.tail)


def parse(frame: bytes) -> tuple[bytes, int, int, int] | None:
    """`(kind, step, k, sent_ns)` of a benchmark frame, or None for any other frame."""
    start = frame.find(_KEY)
    if start < 0:
        return None
    start += len(_KEY)
    end = frame.find(b'"', start)
    parts = frame[start:end].split(b":")
    if len(parts) != 4:
        return None
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def frame_of(payload: bytes) -> bytes:
    """The client frame inside a publish payload (what a client receives)."""
    return payload.partition(b"\n")[2]
