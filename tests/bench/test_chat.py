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
