"""Chat over the gateway's real WebSocket: the seed's `message` frame, streaming frames, cancel,
foreign sessions, and a tool-created notification arriving on the same socket."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.agent_svc.stack import ChatStack, ask, stack_fixture
from tests.support import fake_anthropic as fa

stack = stack_fixture("chat-ws-e2e", notifications=True)


async def _open(stack: ChatStack, session: uuid.UUID, token: str) -> ClientConnection:
    ws = await connect(
        f"{stack.gateway.ws_url}/api/v1/ws/{session}?token={token}", compression=None
    )
    hello = json.loads(await ws.recv())
    assert hello["type"] == "connection_established"
    return ws


async def _until(ws: ClientConnection, frame_type: str) -> list[dict[str, Any]]:
    """Frames received up to and including the first of `frame_type` (10 s at most)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not frames or frames[-1]["type"] != frame_type:
            frames.append(json.loads(await ws.recv()))
    return frames


def _key() -> str:
    return f"wse-{uuid.uuid4().hex[:10]}"


async def test_message_frame_over_the_websocket(
    stack: ChatStack, fake: fa.FakeAnthropic, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """The seed's `message` → the seed's `message` frame with the complete reply; the turn is in
    the session's history through the gateway's facade."""
    key = _key()
    fake.script(key, fa.text("Hello ", "there."))
    token = token_for(user_id)
    session = uuid.uuid4()
    ws = await _open(stack, session, token)
    try:
        await ws.send(json.dumps({"type": "message", "message": f"{key} hi"}))
        frames = await _until(ws, "message")
    finally:
        await ws.close()
    assert [f["type"] for f in frames] == ["message"]
    data = frames[0]["data"]
    assert (data["reply"], data["tool_calls"], data["tokens_used"]) == ("Hello there.", [], 37)
    async with httpx.AsyncClient() as http:
        history = await http.get(
            f"{stack.gateway.url}/api/v1/sessions/{session}/messages",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert [m["content"] for m in history.json()["items"]] == [f"{key} hi", "Hello there."]
    assert history.json()["items"][1]["id"] == data["id"]


async def test_streaming_frames_and_cancel(
    stack: ChatStack, fake: fa.FakeAnthropic, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """`"stream": true` streams `chat_event` frames; a `cancel` frame stops the answer, which
    ends `cancelled` and is delivered with its partial reply."""
    key = _key()
    words = [f"w{i} " for i in range(300)]
    fake.script(key, fa.text(*words, delay=0.05))
    ws = await _open(stack, uuid.uuid4(), token_for(user_id))
    try:
        await ws.send(json.dumps({"type": "message", "message": key, "stream": True}))
        first = [json.loads(await ws.recv()) for _ in range(3)]
        await ws.send(json.dumps({"type": "cancel"}))
        rest = await _until(ws, "message")
    finally:
        await ws.close()
    frames = first + rest
    assert {f["type"] for f in frames[:-1]} == {"chat_event"}
    events = [f["event"] for f in frames[:-1]]
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "end" and events[-1]["status"] == "cancelled"
    streamed = "".join(e["content"] for e in events if e["type"] == "token")
    assert frames[-1]["data"]["reply"] == streamed
    assert streamed and "".join(words).startswith(streamed) and streamed != "".join(words)


async def test_foreign_session_is_closed_1008(
    stack: ChatStack, fake: fa.FakeAnthropic, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """A session someone else chatted in (over SSE) cannot be opened by another user."""
    key = _key()
    fake.script(key, fa.text("mine"))
    session = uuid.uuid4()
    await asyncio.to_thread(ask, stack.gateway, token_for(user_id), key, session)
    ws = await connect(
        f"{stack.gateway.ws_url}/api/v1/ws/{session}?token={token_for(uuid.uuid4())}",
        compression=None,
    )
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_tool_created_notification_reaches_the_websocket(
    stack: ChatStack, fake: fa.FakeAnthropic, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """A conversation whose tool creates a notification delivers that notification on the
    user's WebSocket, as well as the answer."""
    key = _key()
    fake.script(
        key,
        fa.tool_use("toolu_ws_n", "notify_user", {"title": "Water", "content": "Drink a glass"}),
        fa.text("I'll remind you."),
    )
    ws = await _open(stack, uuid.uuid4(), token_for(user_id))
    try:
        await ws.send(json.dumps({"type": "message", "message": f"{key} hydrate"}))
        frames = await _until(ws, "message")
        if not any(f["type"] == "notification" for f in frames):
            frames += await _until(ws, "notification")
    finally:
        await ws.close()
    notification = next(f for f in frames if f["type"] == "notification")
    answer = next(f for f in frames if f["type"] == "message")
    assert notification["data"]["title"] == "Water"
    assert notification["data"]["content"] == "Drink a glass"
    assert notification["data"]["related_entity_id"] == answer["data"]["id"]
    assert answer["data"]["tool_calls"][0]["name"] == "notify_user"
    assert answer["data"]["reply"] == "Let me check.I'll remind you."
