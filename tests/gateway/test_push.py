"""Web Push with the gateways in front: subscriptions registered through the public facade, and
the `offline` policy decided by the registry across two gateway processes (a user connected to
either is not pushed; a user with no connection is), with per-type overrides."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from shared import keys
from shared.settings import Settings
from tests.conftest import Infra, SpawnService
from tests.gateway.conftest import INTERNAL, Cluster, equals, eventually, open_ws, recv_until
from tests.support.processes import ServiceProcess
from tests.support.push_service import PushService, StandInSubscription

Token = Callable[..., str]


@dataclass
class PushStack:
    notifications: ServiceProcess
    a: ServiceProcess
    b: ServiceProcess


@pytest.fixture(scope="module")
def stack(spawn_service: SpawnService, cluster: Cluster) -> PushStack:
    """A notifications_svc taking loopback endpoints (policy `offline`, `chat_reply` always,
    `digest` never) behind two gateways of its own (heartbeat 1 s)."""
    notifications = spawn_service(
        "notifications_svc",
        PUSH_ALLOW_LOOPBACK="true",
        PUSH_POLICY="offline",
        PUSH_POLICY_BY_TYPE="chat_reply=always,digest=never",
    )
    upstream = {"NOTIFICATIONS_URL": notifications.url, "AGENT_URL": cluster.agent.url}
    a = spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **upstream)
    b = spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **upstream)
    return PushStack(notifications, a, b)


@pytest.fixture
async def r(infra: Infra) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(infra.redis.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(settings.asyncpg_dsn)
    yield connection
    await connection.close()


async def _register(
    gateway: ServiceProcess, token: str, push_service: PushService
) -> StandInSubscription:
    browser = push_service.subscribe()
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(
            "/api/v1/push/subscriptions",
            json=browser.json(),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 201, response.text
    return browser


async def _create(stack: PushStack, user: uuid.UUID, type_: str = "task_created") -> str:
    async with httpx.AsyncClient(base_url=stack.notifications.url) as client:
        response = await client.post(
            "/internal/v1/notifications",
            json={"user_id": str(user), "title": "Hi", "content": "there", "type": type_},
            headers=INTERNAL,
        )
    assert response.status_code == 201, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def _never_pushed(
    pg: asyncpg.Connection, push_service: PushService, browser: StandInSubscription, nid: str
) -> bool:
    """No job was created for the notification: none is pending (checked first) and the
    stand-in never saw a request for the browser (a sent job is deleted only after its
    request)."""
    pending = await pg.fetchval(
        "SELECT count(*) FROM notifications.push_jobs WHERE notification_id = $1", uuid.UUID(nid)
    )
    return pending == 0 and push_service.requests(browser) == 0


async def test_offline_policy_across_two_gateways(
    stack: PushStack,
    token_for: Token,
    push_service: PushService,
    pg: asyncpg.Connection,
    r: redis.Redis,
) -> None:
    """Users connected to gateway a or b get the live frame and no push; a user with no
    connection gets the push; after disconnecting, the first user is pushed too."""
    on_a, on_b, away = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    browsers = {u: await _register(stack.a, token_for(u), push_service) for u in (on_a, on_b, away)}
    ws_a = await open_ws(stack.a, uuid.uuid4(), token_for(on_a))
    ws_b = await open_ws(stack.b, uuid.uuid4(), token_for(on_b))
    ids = {u: await _create(stack, u) for u in (on_a, on_b, away)}
    for ws, user in ((ws_a, on_a), (ws_b, on_b)):
        frame = await recv_until(ws, lambda f: f["type"] == "notification")
        assert frame["data"]["id"] == ids[user]
    await push_service.until(lambda: len(push_service.received(browsers[away])) == 1)
    assert push_service.received(browsers[away])[0].payload["id"] == ids[away]
    assert await _never_pushed(pg, push_service, browsers[on_a], ids[on_a])
    assert await _never_pushed(pg, push_service, browsers[on_b], ids[on_b])
    await ws_a.close()
    await eventually(lambda: equals(r.exists(keys.user_sessions(on_a)), 0), 10)
    later = await _create(stack, on_a)
    await push_service.until(lambda: len(push_service.received(browsers[on_a])) == 1)
    assert push_service.received(browsers[on_a])[0].payload["id"] == later
    await ws_b.close()
    assert push_service.errors == []


async def test_policy_per_type(
    stack: PushStack, token_for: Token, push_service: PushService, pg: asyncpg.Connection
) -> None:
    """`chat_reply=always` pushes a connected user too; `digest=never` pushes nobody."""
    online, away = uuid.uuid4(), uuid.uuid4()
    online_browser = await _register(stack.b, token_for(online), push_service)
    away_browser = await _register(stack.b, token_for(away), push_service)
    ws = await open_ws(stack.a, uuid.uuid4(), token_for(online))
    digest = await _create(stack, away, "digest")
    reply = await _create(stack, online, "chat_reply")
    await push_service.until(lambda: len(push_service.received(online_browser)) == 1)
    assert push_service.received(online_browser)[0].payload["id"] == reply
    assert await _never_pushed(pg, push_service, away_browser, digest)
    await ws.close()


async def test_vapid_public_key_through_the_facade(stack: PushStack, settings: Settings) -> None:
    """The gateway forwards `GET /api/v1/push/vapid-public-key`, no token needed."""
    async with httpx.AsyncClient(base_url=stack.a.url) as client:
        response = await client.get("/api/v1/push/vapid-public-key")
    assert response.status_code == 200
    assert response.json() == {"public_key": settings.vapid_public_key}
