"""The notification tools end to end: the model's tool calls create, list, count and mark the
user's notifications through the real notifications service, and created ones are published to
the user's channel (what the gateway forwards to the user's WebSockets)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import redis

from shared import keys
from shared.wire import decode_envelope
from tests.agent_svc.stack import ChatStack, ask, stack_fixture
from tests.conftest import TEST_INTERNAL_TOKEN
from tests.support import fake_anthropic as fa

stack = stack_fixture("chat-notify", notifications=True)


def _notifications(stack: ChatStack, token: str) -> list[dict[str, Any]]:
    response = httpx.get(
        stack.extra[0].url + "/api/v1/notifications", headers={"Authorization": f"Bearer {token}"}
    )
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _tool_results(events: list[Any]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "tool_result"]


def test_notify_now_creates_and_publishes(
    stack: ChatStack, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """notify_user creates the notification through notifications_svc; it is published on the
    user's channel, linked to the answer."""
    assert stack.fake is not None
    key = f"n-{uuid.uuid4().hex[:8]}"
    stack.fake.script(
        key,
        fa.tool_use("toolu_n1", "notify_user", {"title": "Stand up", "content": "Time to move"}),
        fa.text("Done."),
    )
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.user_channel(user_id))
    try:
        _, events = ask(stack.gateway, token_for(user_id), f"{key} nudge me")
        result = _tool_results(events)[0]
        assert result["is_error"] is False
        assert json.loads(result["content"])["status"] == "sent"
        frame = None
        deadline = time.monotonic() + 5
        while frame is None and time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                frame = json.loads(decode_envelope(message["data"])[1])
    finally:
        pubsub.close()
        client.close()
    assert frame is not None and frame["type"] == "notification"
    assert frame["data"]["title"] == "Stand up"
    assert frame["data"]["related_entity_id"] == events[0].data["message_id"]
    assert [n["title"] for n in _notifications(stack, token_for(user_id))] == ["Stand up"]


def test_list_count_and_mark_read(
    stack: ChatStack, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """The read tools see only the user's notifications; mark-all-read marks them."""
    assert stack.fake is not None
    for title in ("one", "two"):
        created = httpx.post(
            stack.extra[0].url + "/internal/v1/notifications",
            json={"user_id": str(user_id), "title": title, "content": "c", "type": "test"},
            headers={"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"},
        )
        assert created.status_code == 201
    key = f"l-{uuid.uuid4().hex[:8]}"
    stack.fake.script(
        key,
        fa.tool_use("toolu_c", "count_unread_notifications", {}),
        fa.tool_use("toolu_l", "list_notifications", {"limit": 5}),
        fa.tool_use("toolu_m", "mark_notifications_read", {"all": True}),
        fa.text("All read."),
    )
    token = token_for(user_id)
    _, events = ask(stack.gateway, token, f"{key} what's new?")
    count, listed, marked = (json.loads(r["content"]) for r in _tool_results(events))
    assert count == {"unread_count": 2}
    assert listed["total"] == 2 and [i["title"] for i in listed["items"]] == ["two", "one"]
    assert marked == {"marked_read": 2}
    assert all(n["is_read"] for n in _notifications(stack, token))


def test_scheduled_notification_is_delivered_once(
    stack: ChatStack, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """A notification scheduled a second ahead is delivered by the agent's poller, once."""
    assert stack.fake is not None
    key = f"s-{uuid.uuid4().hex[:8]}"
    stack.fake.script(
        key,
        fa.tool_use(
            "toolu_s", "notify_user", {"title": "Later", "content": "c", "delay_seconds": 1}
        ),
        fa.text("Scheduled."),
    )
    token = token_for(user_id)
    _, events = ask(stack.gateway, token, f"{key} remind me")
    assert json.loads(_tool_results(events)[0]["content"])["status"] == "scheduled"
    deadline = time.monotonic() + 10
    while not _notifications(stack, token):
        assert time.monotonic() < deadline, "the scheduled notification never arrived"
        time.sleep(0.2)
    # Delivered, then taken off the schedule (the item leaves the user's reminders last): no
    # later poll can deliver it again.
    reminders = redis.Redis.from_url(stack.redis.url)
    try:
        while reminders.zcard(keys.agent_user_reminders(user_id)):
            assert time.monotonic() < deadline, "the delivered notification stayed scheduled"
            time.sleep(0.05)
    finally:
        reminders.close()
    items = _notifications(stack, token)
    assert [(n["title"], n["type"]) for n in items] == [("Later", "reminder")]
