"""`gateway.httpprotocol`: a plain WebSocket upgrade is checked on httptools' parse and started
without `websockets` parsing the request again — with the accept key `websockets` computes and
the same ASGI scope — and anything else takes uvicorn's way, answered by `websockets`."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import uvicorn
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.http11 import Request
from websockets.typing import Subprotocol
from websockets.utils import accept_key

from gateway.httpprotocol import GatewayHttpProtocol, plain_upgrade
from gateway.wsprotocol import GatewayWebSocketProtocol

KEY = base64.b64encode(b"0123456789abcdef")
PLAIN: list[tuple[bytes, bytes]] = [
    (b"host", b"127.0.0.1:8000"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"bearer, a.b.c"),
    (b"origin", b"http://127.0.0.1:8000"),
]
OFFERED = [Subprotocol("bearer"), Subprotocol("a.b.c")]


def _with(
    headers: Sequence[tuple[bytes, bytes]], name: bytes, value: bytes | None
) -> list[tuple[bytes, bytes]]:
    """`headers` with `name` replaced by `value` (removed when None)."""
    kept = [(n, v) for n, v in headers if n != name]
    return kept if value is None else [*kept, (name, value)]


def test_plain_upgrade_accept_key_is_the_one_websockets_computes() -> None:
    """A browser's upgrade is plain, answered with the RFC 6455 accept key of its key."""
    assert plain_upgrade("GET", b"/ws?token=x", PLAIN) == accept_key(KEY.decode()).encode()


def test_connection_header_may_list_other_options() -> None:
    """`Connection: keep-alive, Upgrade` (Firefox) is a plain upgrade too."""
    headers = _with(PLAIN, b"connection", b"keep-alive, Upgrade")
    assert plain_upgrade("GET", b"/ws", headers) == accept_key(KEY.decode()).encode()


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("POST", PLAIN),
        ("GET", _with(PLAIN, b"upgrade", b"h2c")),
        ("GET", [*PLAIN, (b"upgrade", b"websocket")]),
        ("GET", _with(PLAIN, b"connection", b"keep-alive")),
        ("GET", _with(PLAIN, b"connection", b"Upgrade;x")),
        ("GET", _with(PLAIN, b"sec-websocket-key", None)),
        ("GET", _with(PLAIN, b"sec-websocket-key", b"not base64!")),
        ("GET", _with(PLAIN, b"sec-websocket-key", base64.b64encode(b"short"))),
        ("GET", [*PLAIN, (b"sec-websocket-key", KEY)]),
        ("GET", _with(PLAIN, b"sec-websocket-version", b"8")),
        ("GET", _with(PLAIN, b"sec-websocket-version", None)),
        ("GET", [*PLAIN, (b"content-length", b"0")]),
        ("GET", [*PLAIN, (b"x-control", b"a\x00b")]),
        ("GET", [*PLAIN, (b"x-long", b"a" * 8192)]),
        ("GET", PLAIN + [(b"x-many", b"1")] * 128),
    ],
    ids=[
        "post", "other-upgrade", "two-upgrades", "no-connection-upgrade", "connection-syntax",
        "no-key", "key-not-base64", "key-not-16-bytes", "two-keys", "version-8", "no-version",
        "content-length", "control-character", "line-too-long",
        "too-many-headers",
    ],
)  # fmt: skip
def test_anything_else_goes_to_websockets(method: str, headers: list[tuple[bytes, bytes]]) -> None:
    """A request `websockets` would refuse, or would read more into, is not plain."""
    assert plain_upgrade(method, b"/ws", headers) is None


def test_an_extension_offered_is_plain_only_with_compression_off() -> None:
    """`websockets` ignores an offered extension unread when the server compresses nothing and
    negotiates it otherwise."""
    headers = [*PLAIN, (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")]
    assert plain_upgrade("GET", b"/ws", headers) == accept_key(KEY.decode()).encode()
    assert plain_upgrade("GET", b"/ws", headers, compression=True) is None


def test_a_url_websockets_would_refuse_goes_to_websockets() -> None:
    """A request line over `websockets`' limit, or a URL that is not ASCII, is not plain."""
    assert plain_upgrade("GET", b"/" + b"a" * 8192, PLAIN) is None
    assert plain_upgrade("GET", "/é".encode(), PLAIN) is None


class Recorded(GatewayWebSocketProtocol):
    """Remembers which way each connection started: `upgrade` (plain) or `handle_connect`."""

    ways: list[str] = []

    def upgrade(self, url: str, headers: Sequence[tuple[bytes, bytes]], accept_key: bytes) -> None:
        self.ways.append("plain")
        super().upgrade(url, headers, accept_key)

    def handle_connect(self, event: Request) -> None:
        self.ways.append("websockets")
        super().handle_connect(event)


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """A uvicorn server on the gateway's two protocols whose application records each scope,
    accepts with the `bearer` subprotocol and echoes one message."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append({k: v for k, v in scope.items() if k not in ("client", "extensions")})
        scopes[-1]["client_host"] = scope["client"][0]
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", "subprotocol": "bearer"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        assert (await receive())["type"] == "websocket.disconnect"

    # As in a gateway process (`shared.service`): uvicorn leaves its loggers' levels unset, and
    # nothing is compressed.
    config = uvicorn.Config(
        app, ws=Recorded, lifespan="off", log_config=None, ws_per_message_deflate=False
    )
    config.load()
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.setLevel(logging.NOTSET)
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GatewayHttpProtocol(config, state, {}), "127.0.0.1", 0
    )
    Recorded.ways = []
    try:
        yield server.sockets[0].getsockname()[1], scopes
    finally:
        logger.setLevel(level)
        server.close()
        await server.wait_closed()


async def test_plain_and_websockets_ways_give_the_same_scope_and_response(
    server: tuple[int, list[dict[str, Any]]],
) -> None:
    """The same handshake, through a trusted proxy, taken the plain way and (with an empty body
    declared, which `websockets` accepts) the `websockets` way: both answered 101 with the same
    headers and the echoed subprotocol, both serve messages, and the application sees the same
    scope, with the client and scheme the proxy forwarded."""
    port, scopes = server
    url = f"ws://127.0.0.1:{port}/echo/s%20id?token=t&last_seq=3"
    responses = []
    proxied = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"}
    for extra in (proxied, {**proxied, "Content-Length": "0"}):
        async with connect(
            url, compression=None, subprotocols=OFFERED, additional_headers=extra
        ) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            assert ws.subprotocol == "bearer"
            assert ws.response is not None
            responses.append(
                (ws.response.status_code, [name for name, _ in ws.response.headers.raw_items()])
            )
    assert Recorded.ways == ["plain", "websockets"]
    assert responses[0] == responses[1]
    plain, other = scopes
    other["headers"] = [h for h in other["headers"] if h[0] != b"content-length"]
    for scope in (plain, other):
        scope["headers"] = [h for h in scope["headers"] if h[0] != b"sec-websocket-key"]
    assert plain == other
    assert plain["path"] == "/echo/s id"
    assert plain["query_string"] == b"token=t&last_seq=3"
    assert plain["subprotocols"] == ["bearer", "a.b.c"]
    assert (plain["client_host"], plain["scheme"]) == ("10.1.2.3", "wss")


async def test_a_browsers_deflate_offer_takes_the_plain_way_and_is_declined(
    server: tuple[int, list[dict[str, Any]]],
) -> None:
    """A client offering `permessage-deflate` (every browser) to the gateway, which compresses
    nothing, is upgraded the plain way and answered without `Sec-WebSocket-Extensions`."""
    port, _ = server
    async with connect(f"ws://127.0.0.1:{port}/echo/x", subprotocols=OFFERED) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
    assert (
        ws.request is not None
        and "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
    )
    assert Recorded.ways == ["plain"]


async def test_at_trace_level_the_websockets_way_is_taken(
    server: tuple[int, list[dict[str, Any]]],
) -> None:
    """With uvicorn's TRACE level on, a plain upgrade takes uvicorn's way, which logs it."""
    port, _ = server
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.setLevel(TRACE_LOG_LEVEL)
    try:
        url = f"ws://127.0.0.1:{port}/echo/x"
        async with connect(url, compression=None, subprotocols=OFFERED) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
    finally:
        logger.setLevel(level)
    assert Recorded.ways == ["websockets"]
