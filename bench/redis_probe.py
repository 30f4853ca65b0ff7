"""The chat scenario's floor: what Redis and the client alone add to a stream entry, no gateway.

"Added by the gateway" (bench.scenarios.chat) is the arrival of a `token` event at the client
minus the millisecond of its reply-stream entry id; it spans the worker's XADD, Redis waking the
gateway's blocked XREAD, the gateway, and the client's own event loop, with Redis and the client
on the load core beside the agent workers. This probe takes the same measurement over the same
hops minus the gateway: a writer process (`python -m bench.redis_probe`, on the load core at the
agent workers' priority) appends an entry to `PROBE_KEY` every `PROBE_INTERVAL` seconds (the
model's pacing), and the chat client reads that key with a blocking XREAD in its own event loop,
beside its SSE streams, taking each entry's arrival minus its id's millisecond. Arrival is when
the reply reached the client's socket, as the kernel stamped it (`bench.arrivals`), like the SSE
streams' — not when the busy client got round to reading it. The gap between the two figures is
the gateway's own share; the floor is what any reader of Redis on this machine would see.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis

from bench.arrivals import ArrivalSocket

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
    is set, until a read after `done` was set (entries read before `counting`: not counted).
    Its own connection, whose reads carry the kernel's arrival stamps (`bench.arrivals`)."""
    address = urlsplit(url)
    sock = await ArrivalSocket.connect(address.hostname or "127.0.0.1", address.port or 6379)
    parser = hiredis.Reader()
    wall_offset = time.time_ns() - time.monotonic_ns()
    latencies: array[int] = array("q")
    # From this millisecond on, not "$": an entry written before the first read still counts.
    last = f"{time.time_ns() // 1_000_000}-0"
    try:
        if address.password:
            await _call(sock, parser, "AUTH", *filter(None, (address.username, address.password)))
        database = address.path.lstrip("/")
        if database not in ("", "0"):
            await _call(sock, parser, "SELECT", database)
        while not done.is_set():
            read, stamp = await _call(
                sock,
                parser,
                "XREAD",
                "COUNT",
                "100",
                "BLOCK",
                str(READ_BLOCK_MS),
                "STREAMS",
                key,
                last,
            )
            now = stamp - wall_offset if stamp else time.monotonic_ns()
            for _, entries in read or ():
                for entry_id, _fields in entries:
                    last = entry_id.decode()
                    if counting.is_set():
                        latencies.append(entry_latency_ns(last, now, wall_offset))
    finally:
        sock.close()
    return latencies


async def _call(sock: ArrivalSocket, parser: Any, *args: str) -> tuple[Any, int]:
    """Send one command; its reply and the arrival stamp of the read that completed it. An
    error reply is raised."""
    command = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        encoded = arg.encode()
        command.append(b"$%d\r\n%s\r\n" % (len(encoded), encoded))
    await sock.sendall(b"".join(command))
    while True:
        data, stamp = await sock.recv()
        parser.feed(data)
        reply = parser.gets()
        if reply is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))
            return reply, stamp


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
