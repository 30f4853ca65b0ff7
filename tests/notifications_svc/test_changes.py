"""`notifications_changed`: marking read, reading all and deleting are announced on the user's
channel (no seq: not stored, not replayed) with the unread count after the change, so every
connected client updates live."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import redis.asyncio as redis

from shared import keys
from shared.settings import Settings
from shared.wire import NotificationsChanged, decode_envelope
from tests.notifications_svc.conftest import create

Auth = Callable[[uuid.UUID], dict[str, str]]


async def next_change(pubsub: Any, timeout: float = 10) -> NotificationsChanged:
    """The next `notifications_changed` frame on the channel (notification frames skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is None:
            continue
        meta, frame = decode_envelope(message["data"])
        if b'"notifications_changed"' in frame:
            assert meta.seq is None, "a change is not a seq'd notification"
            return msgspec.json.decode(frame, type=NotificationsChanged)
    raise AssertionError("no notifications_changed frame")


async def test_read_read_all_and_delete_are_announced(
    http: httpx.AsyncClient, auth: Auth, settings: Settings
) -> None:
    """Each change publishes its kind, the ids and the new unread count; a failed change (404)
    publishes nothing."""
    user = uuid.uuid4()
    made = [await create(http, user, title=f"n{i}") for i in range(3)]
    client = redis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.user_channel(user))
        headers = auth(user)
        response = await http.patch(f"/api/v1/notifications/{made[0]['id']}/read", headers=headers)
        assert response.status_code == 200
        change = (await next_change(pubsub)).data
        assert (change.change, change.ids, change.unread_count) == ("read", [made[0]["id"]], 2)

        missing = uuid.uuid4()
        assert (
            await http.delete(f"/api/v1/notifications/{missing}", headers=headers)
        ).status_code == 404
        assert (
            await http.delete(f"/api/v1/notifications/{made[1]['id']}", headers=headers)
        ).status_code == 204
        change = (await next_change(pubsub)).data
        assert (change.change, change.ids, change.unread_count) == ("deleted", [made[1]["id"]], 1)

        assert (
            await http.post("/api/v1/notifications/read-all", headers=headers)
        ).status_code == 200
        change = (await next_change(pubsub)).data
        assert (change.change, change.ids, change.unread_count) == ("all_read", [], 0)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
