"""The WebSocket chat frame handler (`gateway.chat.handle_ws_frame`) against real agent processes,
Redis and the fake Anthropic server, fed frames as the gateway's connection loop feeds them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from gateway.chat import ChatContext, ChatQuotas, handle_ws_frame
from gateway.replies import ReplyReader
from shared.settings import Settings
from tests.agent_svc.stack import ChatStack, stack_fixture
from tests.support import fake_anthropic as fa

stack = stack_fixture("chat-ws")


class Connection:
    """A stand-in for one gateway connection: what the handler sends, in order."""

    def __init__(self, ctx_args: dict[str, Any]) -> None:
        self.sent: list[dict[str, Any]] = []
        self.ctx = ChatContext(send=self._send, **ctx_args)
        self._changed = asyncio.Event()

    async def _send(self, frame: bytes) -> None:
        self.sent.append(json.loads(frame))
        self._changed.set()

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        """Wait (10 s at most) until the frames sent so far satisfy `predicate`."""
        async with asyncio.timeout(10):
            while not predicate(self.sent):
                self._changed.clear()
                await self._changed.wait()

    async def frame(self, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await handle_ws_frame(self.ctx, raw)

    def types(self) -> list[str]:
        return [f["type"] for f in self.sent]


@pytest.fixture
async def connect(
    stack: ChatStack, base_env: dict[str, str], user_id: uuid.UUID
) -> AsyncIterator[Callable[[], Connection]]:
    settings = Settings.from_env(base_env | stack.env)
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    replies = ReplyReader(client)
    state = SimpleNamespace(
        settings=settings,
        redis=client,
        chat_quotas=ChatQuotas.of(client, settings),
        replies=replies,
    )
    session = uuid.uuid4()
    async with httpx.AsyncClient() as http:
        claim = await http.post(
            f"{stack.agent.url}/internal/v1/sessions/claim",
            json={"session_id": str(session), "user_id": str(user_id)},
            headers={"Authorization": f"Bearer {settings.internal_token}"},
        )
    assert claim.status_code == 200  # what the gateway does before accepting the socket

    def new() -> Connection:
        return Connection(
            {"app_state": state, "user_id": user_id, "session_id": session, "connection_id": "c1"}
        )

    yield new
    await replies.stop()
    await client.aclose()


def _key() -> str:
    return f"ws-{uuid.uuid4().hex[:12]}"


async def test_message_gets_the_seed_message_frame(
    fake: fa.FakeAnthropic, connect: Callable[[], Connection]
) -> None:
    """`message` → one seed `message` frame with the complete reply, tool calls and usage."""
    key = _key()
    fake.script(
        key,
        fa.tool_use("toolu_ws", "current_time", {}),
        fa.text("It is ", "now."),
    )
    conn = connect()
    await conn.frame({"type": "message", "message": f"{key} time?"})
    assert conn.types() == ["message"]
    data = conn.sent[0]["data"]
    assert data["reply"] == "Let me check.It is now."
    assert data["tokens_used"] == 377 + 65 + 25 + 12
    assert [(c["id"], c["name"], c["is_error"]) for c in data["tool_calls"]] == [
        ("toolu_ws", "current_time", False)
    ]
    assert set(data) >= {"id", "reply", "tool_calls", "tokens_used", "created_at"}


async def test_streaming_frames_then_message(
    fake: fa.FakeAnthropic, connect: Callable[[], Connection]
) -> None:
    """`"stream": true` adds one `chat_event` frame per event before the `message` frame."""
    key = _key()
    fake.script(key, fa.text("a", "b", "c", delay=0.02))
    conn = connect()
    await conn.frame({"type": "message", "message": key, "stream": True})
    assert conn.types() == ["chat_event"] * 5 + ["message"]
    events = [f["event"] for f in conn.sent[:-1]]
    assert [e["type"] for e in events] == ["start", "token", "token", "token", "end"]
    assert [e["content"] for e in events[1:4]] == ["a", "b", "c"]
    assert conn.sent[-1]["data"]["id"] == events[0]["message_id"]


async def test_cancel_frame_keeps_partial_reply(
    fake: fa.FakeAnthropic, connect: Callable[[], Connection]
) -> None:
    """A `cancel` frame stops the session's running answer; the `message` frame carries the
    partial reply."""
    key = _key()
    words = [f"w{i} " for i in range(300)]
    fake.script(key, fa.text(*words, delay=0.05))
    conn = connect()
    asking = asyncio.create_task(conn.frame({"type": "message", "message": key, "stream": True}))
    await conn.until(lambda sent: sum(f["event"]["type"] == "token" for f in sent) >= 2)
    canceller = connect()
    await canceller.frame({"type": "cancel"})
    await asyncio.wait_for(asking, 10)
    assert canceller.sent == []
    end = conn.sent[-2]["event"]
    assert end["type"] == "end" and end["status"] == "cancelled"
    reply = conn.sent[-1]["data"]["reply"]
    assert reply and "".join(words).startswith(reply) and reply != "".join(words)


async def test_errors_are_frames(fake: fa.FakeAnthropic, connect: Callable[[], Connection]) -> None:
    """Bad frames (a NUL character included), a busy session, nothing to cancel and a provider
    failure each give an `error` frame with a stable code."""
    conn = connect()
    await conn.frame(b"{nope")
    await conn.frame(b'{"type": "message", "x": ' + b"[" * 60_000)
    await conn.frame({"type": "message"})
    await conn.frame({"type": "message", "message": "  "})
    await conn.frame({"type": "message", "message": "nul \u0000 byte"})
    await conn.frame({"type": "cancel"})
    assert [f["error"]["code"] for f in conn.sent] == [
        "INVALID_JSON", "INVALID_JSON", "INVALID_MESSAGE", "VALIDATION_ERROR", "VALIDATION_ERROR",
        "NOTHING_TO_CANCEL",
    ]  # fmt: skip
    key, key2 = _key(), _key()
    fake.script(key, fa.text(*["x "] * 40, delay=0.05))
    fake.script(key2, fa.http_error(529, "overloaded_error", {"x-should-retry": "false"}))
    streaming = connect()
    first = asyncio.create_task(
        streaming.frame({"type": "message", "message": key, "stream": True})
    )
    await streaming.until(lambda sent: len(sent) > 0)
    busy = connect()
    await busy.frame({"type": "message", "message": key2})
    assert busy.sent[-1]["error"]["code"] == "CHAT_BUSY"
    assert (
        busy.sent[-1]["error"]["details"]["message_id"] == streaming.sent[0]["event"]["message_id"]
    )
    await asyncio.wait_for(first, 10)
    failing = connect()
    await failing.frame({"type": "message", "message": key2})
    error = failing.sent[-1]["error"]
    assert error["code"] == "MODEL_OVERLOADED"
    uuid.UUID(error["details"]["message_id"])


async def test_cancel_of_another_users_answer_is_refused(
    fake: fa.FakeAnthropic, connect: Callable[[], Connection]
) -> None:
    """A `cancel` frame naming another user's answer gets the same error as an unknown id, and
    the answer runs to its end untouched."""
    key = _key()
    words = [f"w{i} " for i in range(20)]
    fake.script(key, fa.text(*words, delay=0.05))
    owner = connect()
    asking = asyncio.create_task(owner.frame({"type": "message", "message": key, "stream": True}))
    await owner.until(lambda sent: len(sent) > 0)
    message_id = owner.sent[0]["event"]["message_id"]
    intruder = Connection(
        {
            "app_state": owner.ctx.app_state,
            "user_id": uuid.uuid4(),
            "session_id": uuid.uuid4(),
            "connection_id": "c2",
        }
    )
    await intruder.frame({"type": "cancel", "message_id": message_id})
    await intruder.frame({"type": "cancel", "message_id": str(uuid.uuid4())})
    foreign, unknown = intruder.sent
    assert foreign["error"]["code"] == "ANSWER_NOT_FOUND"
    assert foreign["error"] == unknown["error"]
    await asyncio.wait_for(asking, 10)
    assert owner.sent[-1]["type"] == "message"
    assert owner.sent[-1]["data"]["reply"] == "".join(words)
