"""Per-user limits, cluster-wide: two gateways in front of one agent worker (offline model) and
notifications_svc, on a Redis of their own. Each limit is reached with requests spread over both
gateways and answered with its documented error: 429 + Retry-After + a stable code over HTTP, an
`error` frame or close 1013 over the WebSocket. And the fair queue: another user's question is
answered after at most one answer of a user who floods."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shared import keys
from tests.agent_svc.stack import ChatStack, start_stack
from tests.conftest import SpawnService
from tests.gateway.conftest import recv_json
from tests.support.processes import ServiceProcess

Token = Callable[..., str]

LIMITS = {
    "AGENT_OFFLINE_DELAY": "0.02",
    "CHAT_MAX_STREAMING_PER_USER": "1",
    "CHAT_MAX_QUEUED_PER_USER": "2",
    "CHAT_MAX_NEW_SESSIONS_PER_HOUR": "6",
    "CHAT_DAILY_TOKEN_BUDGET": "300",
    "WS_MAX_CONNECTIONS_PER_USER": "3",
    "HTTP_USER_RATE_LIMIT": "1",
    "HTTP_USER_RATE_BURST": "10",
    "AGENT_MAX_REMINDERS_PER_USER": "1",
}


@dataclass
class Stack:
    chat: ChatStack
    gateways: list[ServiceProcess]


@pytest.fixture(scope="module")
def stack(
    spawn_service: SpawnService,
    tmp_path_factory: pytest.TempPathFactory,
    base_env: dict[str, str],
) -> Iterator[Stack]:
    chat = start_stack(
        spawn_service,
        tmp_path_factory.mktemp("limits"),
        offline=True,
        notifications=True,
        notifications_database=base_env["DATABASE_URL"],
        **LIMITS,
    )
    second = spawn_service("gateway", AGENT_URL=chat.agent.url, **chat.env)
    try:
        yield Stack(chat, [chat.gateway, second])
    finally:
        second.stop()
        chat.stop()


@dataclass
class Asked:
    status: int
    headers: httpx.Headers
    body: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def first_token_id(self) -> str:
        return str(next(e["event_id"] for e in self.events if e["type"] == "token"))


async def _ask(
    gateway: ServiceProcess, token: str, message: str, session: uuid.UUID | None = None
) -> Asked:
    """POST /api/v1/chat/stream and read the answer to its end (or the error body)."""
    body: dict[str, Any] = {"message": message}
    if session is not None:
        body["session_id"] = str(session)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream("POST", gateway.url + "/api/v1/chat/stream", json=body, headers=headers) as r,
    ):
        if r.status_code != 200:
            await r.aread()
            return Asked(r.status_code, r.headers, r.json())
        asked = Asked(r.status_code, r.headers)
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                asked.events.append(json.loads(line[6:]))
        return asked


def _refused(asked: Asked, code: str) -> dict[str, Any]:
    """Assert the documented HTTP refusal; its details."""
    assert asked.status == 429, (asked.status, asked.body)
    assert int(asked.headers["retry-after"]) >= 1
    error = asked.body["error"]
    assert error["code"] == code, error
    assert error["details"]["retry_after"] == int(asked.headers["retry-after"])
    details: dict[str, Any] = error["details"]
    return details


@pytest.fixture
async def ws_open() -> AsyncIterator[Callable[..., Any]]:
    opened: list[Any] = []

    async def open_(gateway: ServiceProcess, session: uuid.UUID, token: str) -> Any:
        ws = await connect(f"{gateway.ws_url}/api/v1/ws/{session}?token={token}", compression=None)
        opened.append(ws)
        return ws

    yield open_
    for ws in opened:
        await ws.close()


LONG = "please repeat " + " ".join(f"w{n}" for n in range(200))  # about 5 s of streaming


async def test_queue_cap_and_fair_order_across_gateways(
    stack: Stack, token_for: Token, ws_open: Callable[..., Any]
) -> None:
    """User A asks four questions over both gateways while the first streams: one streams, two
    wait in A's queue, the fourth is refused 429 CHAT_QUEUE_FULL (and the same over a WebSocket
    is an `error` frame). User B then asks on the other gateway: B's first token comes after
    A's first answer and before A's second (one answer slot), and A's answers keep their
    order."""
    gw1, gw2 = stack.gateways
    a, b = token_for(uuid.uuid4()), token_for(uuid.uuid4())
    first = asyncio.create_task(_ask(gw1, a, LONG))
    await _wait_for(stack, a, in_stream=1, queued=0)  # the first holds A's place
    second = asyncio.create_task(_ask(gw2, a, "second question"))
    await _wait_for(stack, a, in_stream=1, queued=1)
    third = asyncio.create_task(_ask(gw1, a, "third question"))
    await _wait_for(stack, a, in_stream=1, queued=2)
    fourth = await _ask(gw2, a, "fourth question")
    assert _refused(fourth, "CHAT_QUEUE_FULL")["max_queued"] == 2
    ws = await ws_open(gw2, uuid.uuid4(), a)
    assert (await recv_json(ws))["type"] == "connection_established"
    await ws.send(json.dumps({"type": "message", "message": "fifth"}))
    frame = await recv_json(ws, timeout=10)
    assert frame["type"] == "error" and frame["error"]["code"] == "CHAT_QUEUE_FULL", frame
    other = await _ask(gw2, b, "B asks once")
    answers = [await first, await second, await third]
    assert all(x.status == 200 and x.events[-1]["type"] == "end" for x in [*answers, other])
    a1, a2, a3 = (x.first_token_id() for x in answers)
    b1 = other.first_token_id()
    assert _order(a1) < _order(b1) < _order(a2) < _order(a3)


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


async def _wait_for(stack: Stack, token: str, *, in_stream: int, queued: int) -> None:
    """Until the token's user has `in_stream` questions in `chat:requests` and `queued` in their
    queue, as Redis says (polled, bounded: the question's POST is in flight meanwhile)."""
    user = jwt.decode(token, options={"verify_signature": False})["sub"]
    client = aioredis.Redis.from_url(stack.chat.redis.url)
    try:
        deadline = time.monotonic() + 10
        while (
            await client.zcard(keys.chat_inflight(user)),
            await client.llen(keys.chat_queue(user)),
        ) != (in_stream, queued):
            assert time.monotonic() < deadline, "the questions never took their places"
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()


async def test_daily_token_budget_from_two_gateways(
    stack: Stack, token_for: Token, ws_open: Callable[..., Any]
) -> None:
    """An answer's reported usage (offline model) spends the user's budget: the next question,
    on the other gateway, is refused 429 TOKEN_BUDGET_EXHAUSTED until UTC midnight; over a
    WebSocket it is an `error` frame."""
    gw1, gw2 = stack.gateways
    token = token_for(uuid.uuid4())
    spent = await _ask(gw1, token, " ".join(f"t{n}" for n in range(150)))
    assert spent.events[-1]["type"] == "end" and spent.events[-1]["tokens_used"] >= 300
    refused = await _ask(gw2, token, "one more")
    details = _refused(refused, "TOKEN_BUDGET_EXHAUSTED")
    assert details["budget"] == 300 and details["used"] >= 300
    assert details["retry_after"] <= 86400
    ws = await ws_open(gw1, uuid.uuid4(), token)
    assert (await recv_json(ws))["type"] == "connection_established"
    await ws.send(json.dumps({"type": "message", "message": "and over the socket"}))
    frame = await recv_json(ws, timeout=10)
    assert frame["error"]["code"] == "TOKEN_BUDGET_EXHAUSTED", frame


async def test_new_sessions_per_hour_from_two_gateways(stack: Stack, token_for: Token) -> None:
    """Sessions created by REST, by a WebSocket to a new id and by a chat without a session all
    count; past six, each way is refused: 429 SESSION_LIMIT over HTTP (both gateways), close
    1013 over the WebSocket."""
    gw1, gw2 = stack.gateways
    user = uuid.uuid4()
    token = token_for(user)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        for gateway in (gw1, gw2, gw1):
            created = await http.post(gateway.url + "/api/v1/sessions", json={})
            assert created.status_code == 201, created.text
    for gateway in (gw1, gw2):
        async with connect(
            f"{gateway.ws_url}/api/v1/ws/{uuid.uuid4()}?token={token}", compression=None
        ) as ws:
            assert (await recv_json(ws))["type"] == "connection_established"
    assert (await _ask(gw2, token, "a new session by asking")).status == 200
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        refused = await http.post(gw2.url + "/api/v1/sessions", json={})
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "SESSION_LIMIT"
    _refused(await _ask(gw1, token, "again", uuid.uuid4()), "SESSION_LIMIT")
    _refused(await _ask(gw2, token, "again"), "SESSION_LIMIT")
    async with connect(
        f"{gw1.ws_url}/api/v1/ws/{uuid.uuid4()}?token={token}", compression=None
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1013,
        "too many new sessions: try again later",
    )


async def test_websocket_connections_per_user_across_gateways(
    stack: Stack, token_for: Token, ws_open: Callable[..., Any]
) -> None:
    """Three connections of one user (two on one gateway, one on the other) are the cap: a
    fourth, on either gateway, is closed 1013; after one closes, a new one is accepted."""
    gw1, gw2 = stack.gateways
    token = token_for(uuid.uuid4())
    session = uuid.uuid4()
    held = [await ws_open(g, session, token) for g in (gw1, gw1, gw2)]
    for ws in held:
        assert (await recv_json(ws))["type"] == "connection_established"
    extra = await ws_open(gw2, session, token)
    with pytest.raises(ConnectionClosed) as closed:
        await recv_json(extra)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1013,
        "too many connections for this user",
    )
    await held[0].close()
    await held[0].wait_closed()
    again = await _open_when_room(gw1, session, token, ws_open)
    assert again["type"] == "connection_established"


async def _open_when_room(
    gateway: ServiceProcess, session: uuid.UUID, token: str, ws_open: Callable[..., Any]
) -> dict[str, Any]:
    """The first frame of a new connection, retrying while the closed one is still being
    deregistered (the server finishes that just after the close handshake)."""
    deadline = time.monotonic() + 10
    while True:
        ws = await ws_open(gateway, session, token)
        try:
            return await recv_json(ws)
        except ConnectionClosed:
            assert time.monotonic() < deadline, "no room after a connection closed"
            await asyncio.sleep(0.05)


async def test_rest_requests_per_user_across_gateways(stack: Stack, token_for: Token) -> None:
    """REST requests of one user alternating between the gateways share one token bucket: past
    the burst (10) they are refused 429 RATE_LIMITED with Retry-After, and no more passed than
    the burst plus the rate over the time taken."""
    token = token_for(uuid.uuid4())
    headers = {"Authorization": f"Bearer {token}"}
    passed, refused = 0, None
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        for n in range(40):
            gateway = stack.gateways[n % 2]
            answer = await http.get(gateway.url + "/api/v1/notifications/unread/count")
            if answer.status_code == 429:
                refused = answer
                break
            assert answer.status_code == 200, answer.text
            passed += 1
    elapsed = time.monotonic() - start
    assert refused is not None
    assert passed <= 10 + 1 * elapsed + 1
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert int(refused.headers["retry-after"]) >= 1


async def test_scheduled_reminders_per_user(stack: Stack, token_for: Token) -> None:
    """With one reminder scheduled, asking for another (on the other gateway) gets the model
    a `REMINDER_LIMIT` tool error, which the answer reports; nothing is scheduled twice."""
    gw1, gw2 = stack.gateways
    token = token_for(uuid.uuid4())
    first = await _ask(gw1, token, "remind me in 5 minutes to stretch")
    second = await _ask(gw2, token, "remind me in 10 minutes to drink water")
    results = [[e for e in asked.events if e["type"] == "tool_result"] for asked in (first, second)]
    assert [r[0]["is_error"] for r in results] == [False, True]
    assert "REMINDER_LIMIT" in results[1][0]["content"]
