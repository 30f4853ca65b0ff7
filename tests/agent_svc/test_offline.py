"""The offline model: its trigger phrases, and a whole answer through the real pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
import redis

from agent_svc.offline import LABEL, compose, plan_tool
from shared import keys
from tests.agent_svc.stack import ChatStack, ask, stack_fixture, text_of


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("hello", None),
        ("please notify me", None),
        ("Notify me: build finished", {"title": "Notification", "content": "build finished"}),
        (
            "remind me in 5 minutes to stretch",
            {"title": "Reminder", "content": "stretch", "delay_seconds": 300},
        ),
        (
            "remind me in 2 hours",
            {"title": "Reminder", "content": "remind me in 2 hours", "delay_seconds": 7200},
        ),
        ("REMIND ME about lunch", {"title": "Reminder", "content": "lunch"}),
    ],
)
def test_plan_tool(message: str, expected: dict[str, object] | None) -> None:
    """Messages starting with "notify me"/"remind me" call notify_user, with a delay if given."""
    assert plan_tool(message) == expected


def test_replies_are_labelled() -> None:
    """Every offline reply says it comes from the offline model."""
    assert compose("hi", None).startswith(LABEL)
    assert compose("x", ("boom", True)).startswith(LABEL)
    assert compose("x", ('{"status":"sent"}', False)) == f"{LABEL} Done: I sent you a notification."
    scheduled = '{"status":"scheduled","deliver_at":"2030-01-01T00:00:00+00:00"}'
    assert compose("x", (scheduled, False)).endswith("at 2030-01-01T00:00:00+00:00.")


stack = stack_fixture("chat-offline", offline=True, notifications=True, AGENT_OFFLINE_DELAY="0.005")


def test_offline_answer_streams_labelled_deltas(
    stack: ChatStack, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """Without an API key the answer streams word by word and is labelled offline, in the
    reply and in the agent's log."""
    _, events = ask(stack.gateway, token_for(user_id), "hello there")
    assert events[0].type == "start" and events[-1].type == "end"
    tokens = [e for e in events if e.type == "token"]
    assert len(tokens) > 5
    assert text_of(events) == compose("hello there", None)
    assert events[-1].data["tokens_used"] > 0
    assert "offline model in use: ANTHROPIC_API_KEY is not set" in stack.agent.log(tail=1000)


def test_offline_reminder_calls_the_notification_tool(
    stack: ChatStack, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """ "remind me in 1 hour to ..." calls notify_user, which schedules the reminder."""
    _, events = ask(stack.gateway, token_for(user_id), "remind me in 1 hour to stretch")
    types = [e.type for e in events]
    assert types[:3] == ["start", "tool_call", "tool_result"] and types[-1] == "end"
    call, result = events[1].data, events[2].data
    assert call["name"] == "notify_user"
    assert call["input"] == {"title": "Reminder", "content": "stretch", "delay_seconds": 3600}
    assert result["is_error"] is False and '"status":"scheduled"' in result["content"]
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        scheduled = client.zrange(keys.AGENT_SCHEDULED_NOTIFICATIONS, 0, -1)
    finally:
        client.close()
    assert any(str(user_id).encode() in item for item in scheduled)


def test_offline_notify_me_creates_a_notification(
    stack: ChatStack, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """ "notify me ..." with no API key creates the notification through notifications_svc."""
    token = token_for(user_id)
    _, events = ask(stack.gateway, token, "notify me that the build is green")
    result = next(e.data for e in events if e.type == "tool_result")
    assert result["is_error"] is False and '"status":"sent"' in result["content"]
    assert text_of(events).startswith(LABEL + " Done")
    listed = httpx.get(
        stack.extra[0].url + "/api/v1/notifications", headers={"Authorization": f"Bearer {token}"}
    ).json()["items"]
    assert [(n["title"], n["content"]) for n in listed] == [("Notification", "the build is green")]
