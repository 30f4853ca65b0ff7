"""Durable push delivery with real processes: a notifications_svc killed with SIGKILL while its
push request hangs loses nothing (the next instance sends it once the lease ends), and Redis
being down neither fails a create nor loses its push."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg
import httpx

from shared.infra import EmbeddedRedis
from tests.conftest import SpawnService
from tests.gateway.conftest import equals, eventually
from tests.notifications_svc.conftest import INTERNAL, payload
from tests.support.push_service import HANG, PushService

Auth = Callable[[uuid.UUID], dict[str, str]]


async def _subscribe(url: str, headers: dict[str, str], body: dict[str, object]) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/v1/push/subscriptions", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def _create(url: str, user: uuid.UUID) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.post(
            "/internal/v1/notifications", json=payload(user), headers=INTERNAL
        )
    assert response.status_code == 201, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def test_kill_9_mid_send_loses_nothing(
    spawn_service: SpawnService, private_database: str, push_service: PushService, auth: Auth
) -> None:
    """SIGKILL while the push request hangs: the job stays in PostgreSQL, and another instance
    sends it when the lease (twice PUSH_TIMEOUT plus 1 s) ends; the browser gets it exactly once."""
    env = {
        "DATABASE_URL": private_database,
        "PUSH_ALLOW_LOOPBACK": "true",
        "PUSH_POLICY": "always",
        "PUSH_TIMEOUT": "2",
    }
    first = spawn_service("notifications_svc", **env)
    user = uuid.uuid4()
    browser = push_service.subscribe(HANG)
    await _subscribe(first.url, auth(user), browser.json())
    notification_id = await _create(first.url, user)
    await push_service.until(lambda: push_service.hanging(browser) == 1)
    first.kill()
    conn = await asyncpg.connect(private_database)
    try:
        jobs = await conn.fetch("SELECT attempts, dead_at FROM notifications.push_jobs")
        assert [(j["attempts"], j["dead_at"]) for j in jobs] == [(1, None)]
        spawn_service("notifications_svc", **env)
        await push_service.until(lambda: len(push_service.received(browser)) == 1, timeout=30)
        assert push_service.received(browser)[0].payload["id"] == notification_id
        # The stand-in records a push before answering; the job goes once the 201 is back.
        count = "SELECT count(*) FROM notifications.push_jobs"
        await eventually(lambda: equals(conn.fetchval(count), 0), 10)
    finally:
        await conn.close()
    assert push_service.requests(browser) == 2
    assert push_service.errors == []


async def test_redis_down_still_creates_and_pushes(
    spawn_service: SpawnService,
    private_database: str,
    private_redis: EmbeddedRedis,
    push_service: PushService,
    auth: Auth,
) -> None:
    """With Redis stopped the presence is unknown: the create answers 201 and the user (who
    may be offline) is pushed."""
    service = spawn_service(
        "notifications_svc",
        DATABASE_URL=private_database,
        REDIS_URL=private_redis.url,
        PUSH_ALLOW_LOOPBACK="true",
    )
    user = uuid.uuid4()
    browser = push_service.subscribe()
    await _subscribe(service.url, auth(user), browser.json())
    private_redis.stop()
    notification_id = await _create(service.url, user)
    await push_service.until(lambda: len(push_service.received(browser)) == 1)
    assert push_service.received(browser)[0].payload["id"] == notification_id
