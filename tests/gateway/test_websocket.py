"""The WebSocket endpoint against real gateways, on both WebSocket read paths (`ws_path`): the
seed's frames, the three auth methods, the auth/Origin/ownership refusals, bad frames, token
refresh and expiry."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from gateway.websocket import _forget_handshake
from tests.gateway.conftest import (
    Cluster,
    closed_with,
    open_ws,
    recv_json,
    ws_url,
)
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


async def test_seed_client_gets_seed_frames(gateway: ServiceProcess, token_for: Token) -> None:
    """A client written to the seed's protocol: connection_established, ping -> pong, exact keys."""
    user, session = uuid.uuid4(), uuid.uuid4()
    ws = await open_ws(gateway, session, token_for(user), greet=False)
    established = await recv_json(ws)
    assert established["type"] == "connection_established"
    assert set(established) == {"type", "data"}
    assert set(established["data"]) == {"session_id", "user_id", "connected_at"}
    assert established["data"]["session_id"] == str(session)
    assert established["data"]["user_id"] == str(user)
    await ws.send(json.dumps({"type": "ping"}))
    pong = await recv_json(ws)
    assert set(pong) == {"type", "timestamp"} and pong["type"] == "pong"
    assert pong["timestamp"].endswith("+00:00")
    await ws.close()


async def test_three_auth_methods(gateway: ServiceProcess, token_for: Token) -> None:
    """?token=, Authorization: Bearer, and the `bearer, <JWT>` subprotocol (echoed) all work."""
    user = uuid.uuid4()
    token = token_for(user)
    by_query = await open_ws(gateway, uuid.uuid4(), token)
    by_header = await connect(
        ws_url(gateway, uuid.uuid4()),
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
    )
    assert (await recv_json(by_header))["data"]["user_id"] == str(user)
    by_subprotocol = await connect(
        ws_url(gateway, uuid.uuid4()),
        subprotocols=["bearer", token],  # type: ignore[list-item]
        origin="http://localhost:5173",  # type: ignore[arg-type]
        compression=None,
    )
    assert by_subprotocol.subprotocol == "bearer"
    assert (await recv_json(by_subprotocol))["data"]["user_id"] == str(user)
    for ws in (by_query, by_header, by_subprotocol):
        await ws.close()


def _unsigned(user: uuid.UUID) -> str:
    header = {"alg": "none", "typ": "JWT"}
    claims = {"sub": str(user), "exp": int(time.time()) + 3600}
    return jwt.encode(claims, None, algorithm="none", headers=header)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda user, mint: None, "token missing"),
        (
            lambda user, mint: jwt.encode(
                {"sub": str(user), "exp": int(time.time()) + 60}, "another-key-" * 4, "HS256"
            ),
            "token signature invalid",
        ),
        (lambda user, mint: _unsigned(user), "token algorithm not allowed"),
        (lambda user, mint: mint(user, ttl=-10), "token expired"),
        (lambda user, mint: "not-a-jwt", "token malformed"),
    ],
    ids=["missing", "bad-signature", "alg-none", "expired", "malformed"],
)
async def test_bad_tokens_close_1008_with_reason(
    gateway: ServiceProcess,
    token_for: Token,
    make_token: Callable[[uuid.UUID, Token], str | None],
    reason: str,
) -> None:
    """Every refused token: the handshake completes, then close 1008 naming the cause."""
    ws = await open_ws(gateway, uuid.uuid4(), make_token(uuid.uuid4(), token_for), greet=False)
    assert await closed_with(ws) == (1008, reason)


async def test_foreign_session_refused_on_any_instance(
    gateway: ServiceProcess, cluster: Cluster, token_for: Token
) -> None:
    """A session belongs to its first user: another user is refused 1008 on every gateway, even
    after the owner left."""
    owner, intruder, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ws = await open_ws(gateway, session, token_for(owner))
    await ws.close()
    for instance in (gateway, cluster.b):
        refused = await open_ws(instance, session, token_for(intruder), greet=False)
        assert await closed_with(refused) == (1008, "session belongs to another user")


async def test_origin_check(gateway: ServiceProcess, token_for: Token) -> None:
    """A foreign browser Origin is refused 1008; a listed one and no Origin at all are accepted."""
    token = token_for(uuid.uuid4())
    foreign = await open_ws(
        gateway, uuid.uuid4(), token, greet=False, origin="https://evil.example"
    )
    assert await closed_with(foreign) == (1008, "origin not allowed")
    listed = await open_ws(gateway, uuid.uuid4(), token, origin="http://localhost:5173")
    await listed.close()


async def test_session_id_must_be_uuid(gateway: ServiceProcess, token_for: Token) -> None:
    """A session id that is not a UUID is refused 1008."""
    ws = await open_ws(gateway, "not-a-uuid", token_for(uuid.uuid4()), greet=False)
    assert await closed_with(ws) == (1008, "session id is not a UUID")


async def test_bad_frames_answered_connection_survives(
    gateway: ServiceProcess, token_for: Token
) -> None:
    """Invalid JSON, non-objects, unknown types and binary frames get stable error codes; the
    connection keeps working and other connections are untouched."""
    ws = await open_ws(gateway, uuid.uuid4(), token_for(uuid.uuid4()))
    cases: list[tuple[str | bytes, str]] = [
        ("{not json", "INVALID_JSON"),
        ("[1, 2]", "INVALID_MESSAGE"),
        ('{"type": 5}', "INVALID_MESSAGE"),
        ('{"no_type": true}', "INVALID_MESSAGE"),
        ('{"type": "teleport"}', "UNKNOWN_TYPE"),
        ('{"type": "refresh_token"}', "INVALID_MESSAGE"),
        (b"\x00\x01binary", "INVALID_MESSAGE"),
        # Regression: nesting deeper than msgspec's recursion limit closed the connection 1011.
        ("[" * 60_000, "INVALID_MESSAGE"),
        ('{"type": "ping", "x": ' + "[" * 60_000, "INVALID_JSON"),
        ('{"type": "message", "message": "hi", "x": ' + "[" * 60_000, "INVALID_JSON"),
    ]
    for frame, code in cases:
        await ws.send(frame)
        answer = await recv_json(ws)
        assert answer["type"] == "error", answer
        assert answer["error"]["code"] == code, (frame, answer)
        assert set(answer["error"]) == {"code", "message", "details"}
    await ws.send('{"type": "ping"}')
    assert (await recv_json(ws))["type"] == "pong"
    await ws.close()


async def test_token_refresh_extends_connection(gateway: ServiceProcess, token_for: Token) -> None:
    """A short-lived token gets `token_expiring`; after `refresh_token` the connection outlives
    the first token (a twin connection with the same token, not refreshed, is closed at its
    `exp` first); a token for another user is refused without closing."""
    user = uuid.uuid4()
    short = token_for(user, ttl=3)
    ws = await open_ws(gateway, uuid.uuid4(), short)
    twin = await open_ws(gateway, uuid.uuid4(), short)
    warning = await recv_json(ws)
    assert warning["type"] == "token_expiring" and "expires_at" in warning
    await ws.send(json.dumps({"type": "refresh_token", "token": token_for(uuid.uuid4())}))
    refused = await recv_json(ws)
    assert refused["error"]["code"] == "TOKEN_INVALID"
    await ws.send(json.dumps({"type": "refresh_token", "token": token_for(user, ttl=3600)}))
    assert (await recv_json(ws))["type"] == "token_refreshed"
    assert (await recv_json(twin))["type"] == "token_expiring"
    assert await closed_with(twin, timeout=10) == (1008, "token expired")
    await ws.send('{"type": "ping"}')
    assert (await recv_json(ws))["type"] == "pong"
    await ws.close()


async def test_token_expiry_closes_1008(gateway: ServiceProcess, token_for: Token) -> None:
    """Without a refresh, the connection is closed 1008 "token expired" at `exp`."""
    ws = await open_ws(gateway, uuid.uuid4(), token_for(uuid.uuid4(), ttl=2))
    assert await closed_with(ws, timeout=6) == (1008, "token expired")


async def test_chat_frames_reach_the_chat_seam(gateway: ServiceProcess, token_for: Token) -> None:
    """A seed `message` frame is handed to gateway.chat, whose answer arrives on the socket."""
    ws = await open_ws(gateway, uuid.uuid4(), token_for(uuid.uuid4()))
    await ws.send(json.dumps({"type": "message", "message": "hello"}))
    answer = await recv_json(ws)
    assert answer["type"] != "error" or answer["error"]["code"] not in {
        "UNKNOWN_TYPE",
        "INVALID_MESSAGE",
    }
    await ws.close()


async def test_handshake_data_is_forgotten_once_connected() -> None:
    """After the handshake the endpoint drops the request's headers, query string (the seed's
    `?token=`) and subprotocols (the browser's token), Starlette's cached views included."""
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/api/v1/ws/x",
        "headers": [(b"authorization", b"Bearer secret"), (b"origin", b"http://a")],
        "query_string": b"token=secret&last_seq=3",
        "subprotocols": ["bearer", "secret"],
    }

    async def never(*_: object) -> Any:
        raise AssertionError("no ASGI message is exchanged")

    websocket = WebSocket(scope, never, never)
    assert websocket.headers["authorization"] == "Bearer secret"
    assert websocket.query_params["token"] == "secret"
    _forget_handshake(websocket)
    assert (scope["headers"], scope["query_string"], scope["subprotocols"]) == ([], b"", [])
    assert "authorization" not in websocket.headers
    assert "token" not in websocket.query_params
