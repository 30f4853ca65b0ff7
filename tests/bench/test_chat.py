"""The chat scenario's accounting: deltas counted by their stamps (an event may carry several),
the wait for the agent workers' heartbeats and the Redis floor probe, against a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from bench import redis_probe
from bench.scenarios.chat import StreamResult, _read_event, wait_for_workers
from shared import keys
from shared.infra import EmbeddedRedis
from shared.settings import Settings


def test_an_event_carrying_several_deltas_counts_each() -> None:
    """One `token` event with three stamped deltas is one event, three tokens, three latencies
    (each from its own stamp); `end` ends the stream."""
    result = StreamResult()
    content = "[1000] [2000] [3000] "
    raw = b"data: " + json.dumps({"type": "token", "content": content}).encode()
    assert not _read_event(raw, 5000, 0, result)
    assert (result.events, result.tokens, list(result.added_ns)) == (1, 3, [4000, 3000, 2000])
    assert _read_event(b'data: {"type": "end"}', 6000, 0, result)
    assert result.ended == "end" and result.first_token_ns == 5000


def test_the_gateways_share_starts_when_the_worker_wrote_the_event() -> None:
    """The gateway's latency for a `token` event is its arrival minus the later of its reply
    stream entry's millisecond (wall clock, moved to the monotonic one) and its last delta's
    stamp; an event without an `event_id` gives none."""
    result = StreamResult()
    offset = 1_000_000_000  # the wall clock is 1 s ahead of the monotonic one here

    def token(event_id: str, content: str) -> bytes:
        event = {"type": "token", "content": content}
        if event_id:
            event["event_id"] = event_id
        return b"data: " + json.dumps(event).encode()

    # Entry at wall 1005 ms = monotonic 5 ms, but the last delta was stamped at 6 ms: 6 counts.
    assert not _read_event(token("1005-0", "[1000000] [6000000] "), 9_000_000, 0, result, offset)
    # Entry at monotonic 8 ms, later than its delta's stamp (7 ms): 8 counts.
    assert not _read_event(token("1008-1", "[7000000] "), 9_500_000, 0, result, offset)
    assert not _read_event(token("", "[9000000] "), 9_600_000, 0, result, offset)
    assert list(result.gateway_ns) == [3_000_000, 1_500_000]
    assert result.tokens == 4


def test_wait_for_workers_counts_fresh_heartbeats(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    """Returns once enough workers sent a heartbeat lately; stale ones do not count."""
    own = dataclasses.replace(settings, redis_url=private_redis.url)
    client = redis.Redis.from_url(own.redis_url)
    try:
        client.zadd(keys.CHAT_WORKERS, {"stale": time.time() - 60, "fresh": time.time()})
        assert wait_for_workers(own, 1, timeout=2) < 1
        with pytest.raises(TimeoutError):
            wait_for_workers(own, 2, timeout=0.3)
    finally:
        client.close()


def test_entry_latency_is_arrival_minus_the_entry_ids_millisecond() -> None:
    """Entry `1005-3` was written at wall 1005 ms; with the wall clock 1 s ahead of the
    monotonic one that is monotonic 5 ms, so an arrival at 7.5 ms took 2.5 ms."""
    assert redis_probe.entry_latency_ns("1005-3", 7_500_000, 1_000_000_000) == 2_500_000


async def _probe(url: str, counting: asyncio.Event, entries: int) -> tuple[list[int], int]:
    """Run the writer process until `entries` are written (then kill it), the reader beside it
    until one read after that; the latencies counted and the entries written."""
    key = f"bench:probe:{time.monotonic_ns()}"
    done = asyncio.Event()
    reader = asyncio.create_task(redis_probe.read_floor(url, key, counting, done))
    await asyncio.sleep(0)  # the reader has taken its starting point
    env = os.environ | {
        "REDIS_URL": url,
        redis_probe.KEY_ENV: key,
        redis_probe.INTERVAL_ENV: "0.01",
    }
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.redis_probe", env=env
    )
    client = redis.asyncio.Redis.from_url(url)
    try:
        seen, last = 0, "0-0"
        while seen < entries:
            read: Any = await client.xread({key: last}, block=5000)
            for _, found in read:
                seen += len(found)
                last = found[-1][0].decode()
        writer.kill()
        await writer.wait()
        done.set()
        return list(await reader), int(await client.xlen(key))
    finally:
        if writer.returncode is None:
            writer.kill()
            await writer.wait()
        reader.cancel()
        await client.aclose()


async def test_floor_counts_every_probe_entry_once_counting(private_redis: EmbeddedRedis) -> None:
    """The writer process appends entries at its interval; the reader counts every one of them
    (each a non-negative upper bound), and nothing while `counting` is not set."""
    counting = asyncio.Event()
    counting.set()
    latencies, written = await _probe(private_redis.url, counting, 10)
    assert len(latencies) == written >= 10
    assert all(latency >= 0 for latency in latencies), latencies
    latencies, written = await _probe(private_redis.url, asyncio.Event(), 5)
    assert latencies == [] and written >= 5
