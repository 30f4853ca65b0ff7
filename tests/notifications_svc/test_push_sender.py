"""The push sender against real PostgreSQL (a database of the test's own, so no other instance's
sender takes its jobs) and the push-service stand-in, driven step by step with a test clock:
what is sent, and what each answer of the push service does to the job and the subscription."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY

from notifications_svc import push_store, store, webpush
from notifications_svc.push_policy import Presence, PushPlanner
from notifications_svc.push_sender import PushSender
from notifications_svc.wire import CreateNotification
from shared import db, migrate, redis_client
from shared.settings import Settings
from tests.support.push_service import HANG, Answer, PushService, StandInSubscription


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    pool: asyncpg.Pool
    settings: Settings
    clock: Clock
    sender: PushSender
    planner: PushPlanner
    http: httpx.AsyncClient
    service: PushService

    async def subscribe(self, user: uuid.UUID, *answers: Answer) -> StandInSubscription:
        browser = self.service.subscribe(*answers)
        body = webpush.decode_subscription(msgspec.json.encode(browser.json()))
        parsed = webpush.parse_subscription(body, allow_loopback=True)
        await push_store.subscribe(self.pool, user, parsed, cap=10)
        return browser

    async def notify(self, user: uuid.UUID, **fields: object) -> uuid.UUID:
        request = CreateNotification(
            user_id=user,
            title=str(fields.get("title", "Build finished")),
            content=str(fields.get("content", "main is green")),
            type=str(fields.get("type", "build")),
            action={"url": "/builds/7"},
        )
        created = await store.create(self.pool, request, planner=self.planner)
        return created.row.id

    async def step(self) -> int:
        """Lease what is due now, send it, settle every answer; how many were leased."""
        leased = await self.sender.dispatch(self.http)
        await self.sender.idle()
        return leased

    async def job(self, notification_id: uuid.UUID) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT attempts, extract(epoch FROM next_attempt_at)::float8 AS due, last_error,"
            " dead_at FROM notifications.push_jobs WHERE notification_id = $1",
            notification_id,
        )


@pytest.fixture
async def rig(
    settings: Settings, private_database: str, push_service: PushService
) -> AsyncIterator[Rig]:
    own = dataclasses.replace(
        settings,
        database_url=private_database,
        push_policy="always",
        push_timeout=1.0,
        push_max_attempts=3,
    )
    await migrate.apply_with_settings(own)
    pool = await db.create_pool(own)
    redis = redis_client.create_client(own)
    clock = Clock()
    sender = PushSender(pool, own, clock=clock)
    planner = PushPlanner(own, Presence(redis), sender.wake, clock=clock)
    try:
        async with httpx.AsyncClient(timeout=own.push_timeout) as http:
            yield Rig(pool, own, clock, sender, planner, http, push_service)
    finally:
        await redis.aclose()
        await pool.close()


async def test_push_is_signed_encrypted_and_carries_the_notification(rig: Rig) -> None:
    """The stand-in verifies the VAPID JWT and decrypts the body: the exact JSON of the
    notification, with TTL, Urgency and Topic headers; the job is gone afterwards."""
    user = uuid.uuid4()
    browser = await rig.subscribe(user)
    notification_id = await rig.notify(user)
    assert await rig.step() == 1
    [received] = rig.service.received(browser)
    assert received.payload == {
        "id": str(notification_id),
        "title": "Build finished",
        "content": "main is green",
        "type": "build",
        "action": {"url": "/builds/7"},
    }
    assert received.headers["ttl"] == "86400"
    assert received.headers["urgency"] == "normal"
    assert received.headers["topic"] == "build"
    assert received.claims["aud"] == rig.service.origin
    assert received.claims["sub"] == rig.settings.vapid_subject
    assert rig.service.errors == []
    assert await rig.job(notification_id) is None


async def test_every_subscription_of_the_user_gets_the_push(rig: Rig) -> None:
    """A user with two browsers gets the notification on both, another user on neither."""
    user, other = uuid.uuid4(), uuid.uuid4()
    first, second = await rig.subscribe(user), await rig.subscribe(user)
    bystander = await rig.subscribe(other)
    await rig.notify(user)
    assert await rig.step() == 2
    assert len(rig.service.received(first)) == len(rig.service.received(second)) == 1
    assert rig.service.requests(bystander) == 0


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_deletes_the_subscription(rig: Rig, status: int) -> None:
    """404/410 from the push service delete the subscription and its pending pushes."""
    user = uuid.uuid4()
    await rig.subscribe(user, Answer(status))
    first = await rig.notify(user)
    assert await rig.step() == 1
    assert await push_store.list_subscriptions(rig.pool, user) == []
    assert await rig.job(first) is None
    await rig.notify(user)  # nothing left to push to
    assert await rig.step() == 0


async def test_429_is_retried_exactly_after_retry_after(rig: Rig) -> None:
    """429 with `Retry-After: 120` reschedules the push 120 s later, not a second sooner."""
    user = uuid.uuid4()
    browser = await rig.subscribe(user, Answer(429, retry_after="120"))
    notification_id = await rig.notify(user)
    assert await rig.step() == 1
    job = await rig.job(notification_id)
    assert job is not None and job["attempts"] == 1 and job["last_error"] == "429"
    assert job["due"] == pytest.approx(rig.clock.now + 120, abs=0.01)
    rig.clock.advance(119)
    assert await rig.step() == 0
    assert rig.service.requests(browser) == 1
    rig.clock.advance(1)
    assert await rig.step() == 1
    assert [r.payload["id"] for r in rig.service.received(browser)] == [str(notification_id)]
    assert await rig.job(notification_id) is None


async def test_5xx_backs_off_then_dead_letters(rig: Rig) -> None:
    """500 without Retry-After is retried after a backoff delay; after PUSH_MAX_ATTEMPTS (3) it
    is dead-lettered and never sent again."""
    user = uuid.uuid4()
    browser = await rig.subscribe(user, Answer(500), Answer(503), Answer(500))
    notification_id = await rig.notify(user)
    for attempt in (1, 2):
        assert await rig.step() == 1
        job = await rig.job(notification_id)
        assert job is not None and job["attempts"] == attempt and job["dead_at"] is None
        assert rig.clock.now + 1 <= job["due"] <= rig.clock.now + 5 * 2**attempt
        assert await rig.step() == 0  # not due yet
        rig.clock.advance(3600)
    assert await rig.step() == 1
    job = await rig.job(notification_id)
    assert job is not None and job["dead_at"] is not None and job["last_error"] == "500"
    rig.clock.advance(86400)
    assert await rig.step() == 0
    assert rig.service.requests(browser) == 3


async def test_permanent_refusal_dead_letters_at_once(rig: Rig) -> None:
    """A 403 (e.g. subscribed with another VAPID key) cannot succeed: dead at the first try."""
    user = uuid.uuid4()
    await rig.subscribe(user, Answer(403))
    notification_id = await rig.notify(user)
    assert await rig.step() == 1
    job = await rig.job(notification_id)
    assert job is not None and job["attempts"] == 1 and job["dead_at"] is not None


async def test_hanging_push_service_does_not_block_other_users(rig: Rig) -> None:
    """While one user's push service hangs, another user's push is sent; the hanging one times
    out after PUSH_TIMEOUT and is rescheduled."""
    stuck_user, other_user = uuid.uuid4(), uuid.uuid4()
    stuck = await rig.subscribe(stuck_user, HANG)
    other = await rig.subscribe(other_user)
    stuck_id = await rig.notify(stuck_user)
    await rig.notify(other_user)
    assert await rig.sender.dispatch(rig.http) == 2
    await rig.service.until(
        lambda: bool(rig.service.received(other)) and rig.service.hanging(stuck) == 1
    )
    await rig.sender.idle()  # the hanging request times out (PUSH_TIMEOUT = 1 s)
    job = await rig.job(stuck_id)
    assert job is not None and job["last_error"] == "timed out" and job["dead_at"] is None


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_metrics_count_sent_gone_failed_and_latency(rig: Rig) -> None:
    """sent, gone, failed and dead-lettered counters and the latency histogram move with the
    outcomes."""
    names = (
        "notifications_push_sent_total",
        "notifications_push_gone_total",
        "notifications_push_failed_total",
        "notifications_push_dead_lettered_total",
        "notifications_push_latency_seconds_count",
    )
    before = {name: _sample(name) for name in names}
    ok, gone, refused = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await rig.subscribe(ok)
    await rig.subscribe(gone, Answer(410))
    await rig.subscribe(refused, Answer(400))
    for user in (ok, gone, refused):
        await rig.notify(user)
    assert await rig.step() == 3
    moved = {name: _sample(name) - before[name] for name in names}
    assert moved == {
        "notifications_push_sent_total": 1,
        "notifications_push_gone_total": 1,
        "notifications_push_failed_total": 1,
        "notifications_push_dead_lettered_total": 1,
        "notifications_push_latency_seconds_count": 1,
    }
