"""`shared.quotas` against a real Redis, on a fake clock where the limit reads one: bursts, the
refill rate, `retry_after`, the hourly session count and the daily token budget."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import redis.asyncio as redis

from shared.errors import RateLimited
from shared.infra import free_port
from shared.quotas import DailyTokens, HourlyCount, TokenBucket
from shared.redis_client import RedisClient


class FakeClock:
    """Unix seconds that move only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_bucket_allows_a_burst_then_refills_at_the_rate(client: redis.Redis) -> None:
    """`burst` requests pass at once, the next is refused with `retry_after`; after 1/rate
    seconds of the clock one more passes."""
    clock = FakeClock(1_000_000.0)
    bucket = TokenBucket(client, rate=2, burst=3, clock=clock)
    user = uuid.uuid4()
    for _ in range(3):
        await bucket.take(user)
    with pytest.raises(RateLimited) as caught:
        await bucket.take(user)
    assert caught.value.retry_after == 1
    assert caught.value.details == {"limit_per_second": 2, "burst": 3, "retry_after": 1}
    clock.now += 0.5
    await bucket.take(user)
    with pytest.raises(RateLimited):
        await bucket.take(user)


async def test_bucket_is_per_user(client: redis.Redis) -> None:
    """One user's empty bucket leaves another user's full."""
    bucket = TokenBucket(client, rate=1, burst=1, clock=FakeClock(2_000_000.0))
    first, second = uuid.uuid4(), uuid.uuid4()
    await bucket.take(first)
    with pytest.raises(RateLimited):
        await bucket.take(first)
    await bucket.take(second)


async def test_hourly_count_refuses_past_the_limit(client: redis.Redis) -> None:
    """`limit` sessions per window pass; the next is refused with `SESSION_LIMIT` and the time
    left in the window (at most an hour)."""
    count = HourlyCount(client, limit=2)
    user = uuid.uuid4()
    await count.count_session(user)
    await count.count_session(user)
    with pytest.raises(RateLimited) as caught:
        await count.count_session(user)
    assert caught.value.code == "SESSION_LIMIT"
    assert 1 <= caught.value.retry_after <= 3600


async def test_hourly_count_of_many_in_one_round_trip(any_client: RedisClient) -> None:
    """`count_sessions` counts each entry as `count_session` would, repeats included, with the
    script unknown to Redis first (a restart; a cluster pipeline does not load it): the third
    session of a user with a limit of 2 is refused with the time left, another user's passes."""
    await any_client.script_flush()
    count = HourlyCount(any_client, limit=2)
    user, other = uuid.uuid4(), uuid.uuid4()
    first, second, third, others = await count.count_sessions([user, user, user, other])
    assert (first, second, others) == (None, None, None)
    assert third is not None and 1 <= third <= 3600
    with pytest.raises(RateLimited):
        await count.count_session(user)


async def test_hourly_count_of_many_refuses_nothing_without_redis() -> None:
    """A Redis that cannot count refuses no session (a limit must not become an outage)."""
    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)
    try:
        assert await HourlyCount(gone, limit=1).count_sessions([uuid.uuid4()] * 3) == [None] * 3
    finally:
        await gone.aclose()


async def test_daily_tokens_refuse_until_midnight_utc(client: redis.Redis) -> None:
    """A spent budget is refused until the next UTC midnight; the next day starts afresh."""
    now = dt.datetime(2026, 3, 1, 23, 0, tzinfo=dt.UTC)
    tokens = DailyTokens(client, budget=100, clock=lambda: now)
    user = uuid.uuid4()
    await tokens.check(user)
    await tokens.add(user, 100)
    with pytest.raises(RateLimited) as caught:
        await tokens.check(user)
    assert caught.value.code == "TOKEN_BUDGET_EXHAUSTED" and caught.value.retry_after == 3600
    now += dt.timedelta(hours=1)
    await tokens.check(user)
