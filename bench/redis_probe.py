"""The chat scenario's floor: what Redis and the client alone add to a stream entry, no gateway.

"Added by the gateway" (bench.scenarios.chat) is the arrival of a `token` event at the client
minus the millisecond of its reply-stream entry id; it spans the worker's XADD, Redis waking the
gateway's blocked XREAD, the gateway, and the client's own event loop, with Redis and the client
on the load core beside the agent workers. This probe takes the same measurement over the same
hops minus the gateway: a writer process (`python -m bench.redis_probe`, on the load core at the
agent workers' priority) appends an entry to `PROBE_KEY` every `PROBE_INTERVAL` seconds (the
model's pacing), and the chat client reads that key with a blocking XREAD in its own event loop,
beside its SSE streams, taking each entry's arrival minus its id's millisecond. The gap between
the two figures is the gateway's own share; the floor is what any reader of Redis on this
machine would see.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from typing import Any

import redis
import redis.asyncio

KEY_ENV = "PROBE_KEY"
INTERVAL_ENV = "PROBE_INTERVAL"
READ_BLOCK_MS = 100  # how often the reader looks at `done` while no entry comes


def entry_latency_ns(entry_id: str, now_ns: int, wall_offset_ns: int) -> int:
    """Arrival (`now_ns`, monotonic) minus the entry id's millisecond (Redis's wall clock at the
    XADD, moved to the monotonic clock by `wall_offset_ns` = wall minus monotonic): an upper
    bound, at most 1 ms above the true figure."""
    written_ms = int(entry_id.partition("-")[0])
    return now_ns - (written_ms * 1_000_000 - wall_offset_ns)


async def read_floor(
    url: str, key: str, counting: asyncio.Event, done: asyncio.Event
) -> array[int]:
    """The latency of every entry appended to `key` after this started, read while `counting`
    is set, until a read after `done` was set (entries read before `counting`: not counted)."""
    client = redis.asyncio.Redis.from_url(url)
    wall_offset = time.time_ns() - time.monotonic_ns()
    latencies: array[int] = array("q")
    # From this millisecond on, not "$": an entry written before the first read still counts.
    last = f"{time.time_ns() // 1_000_000}-0"
    try:
        while not done.is_set():
            read: Any = await client.xread({key: last}, count=100, block=READ_BLOCK_MS)
            now = time.monotonic_ns()
            for _, entries in read:
                for entry_id, _fields in entries:
                    last = entry_id.decode()
                    if counting.is_set():
                        latencies.append(entry_latency_ns(last, now, wall_offset))
    finally:
        await client.aclose()
    return latencies


def main() -> None:
    """Append an entry every interval until killed (the stream trimmed to its last thousand)."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key, interval = os.environ[KEY_ENV], float(os.environ.get(INTERVAL_ENV, "0.02"))
    next_at = time.monotonic()
    while True:
        client.xadd(key, {"p": b"1"}, maxlen=1000, approximate=True)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    main()
