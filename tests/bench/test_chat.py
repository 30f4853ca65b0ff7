"""The chat scenario's accounting: deltas counted by their stamps (an event may carry several),
and the wait for the agent workers' heartbeats, against a real Redis."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis

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
