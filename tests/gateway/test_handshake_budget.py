"""The handshake budget (`gateway.httpprotocol`, `HANDSHAKE_BUDGET`): when more new connections'
requests arrive in one event-loop turn than the budget admits, the rest are read on later turns
— every WebSocket handshake and plain request is still answered, in full —, and a connection lost
while its request waits is never parsed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from prometheus_client import REGISTRY
from uvicorn.server import ServerState
from websockets.asyncio.client import connect

from gateway.httpprotocol import HANDSHAKE_BUDGET, GatewayHttpProtocol
from gateway.wsprotocol import GatewayWebSocketProtocol

CLIENTS = 3 * HANDSHAKE_BUDGET  # more than one turn's budget, all arriving at about once


def _deferred() -> float:
    value = REGISTRY.get_sample_value("gateway_handshakes_deferred_total")
    assert value is not None
    return value


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Greets a WebSocket with its path; answers an HTTP request with its path."""
    if scope["type"] == "websocket":
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope["path"]})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    body = scope["path"].encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def _server(
    protocol: type[GatewayHttpProtocol] = GatewayHttpProtocol,
) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """A loopback server of `protocol` in this loop; yields its port and the exceptions the
    loop reported meanwhile."""
    config = uvicorn.Config(
        app, http=protocol, ws=GatewayWebSocketProtocol, lifespan="off", log_level="error"
    )
    config.load()
    state = ServerState()
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1], errors
    finally:
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(None)


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer


async def test_handshakes_over_the_budget_are_all_answered() -> None:
    """Three budgets' worth of WebSockets and as many plain requests at once: the deferred
    counter grows, every WebSocket is greeted with its own path and every request answered
    with its own."""
    before = _deferred()
    async with _server() as (port, errors):

        async def greeting(i: int) -> str:
            async with connect(f"ws://127.0.0.1:{port}/ws/{i}", compression=None) as ws:
                return str(await ws.recv())

        greetings, answers = await asyncio.gather(
            asyncio.gather(*(greeting(i) for i in range(CLIENTS))),
            asyncio.gather(*(_get(port, f"/http/{i}") for i in range(CLIENTS))),
        )
        assert _deferred() > before
        assert greetings == [f"/ws/{i}" for i in range(CLIENTS)]
        for i, answer in enumerate(answers):
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(f"/http/{i}".encode())
        assert errors == []


async def test_connection_lost_while_its_request_waits_is_never_parsed() -> None:
    """A connection whose first request is set aside and then lost (aborted here) is never
    parsed: the application never sees it, the loop reports no exception, and every other
    request is answered."""
    aborted: list[GatewayHttpProtocol] = []
    parsed: list[GatewayHttpProtocol] = []

    class AbortDeferred(GatewayHttpProtocol):
        """Aborts its transport as soon as its first request is set aside by the budget."""

        def data_received(self, data: bytes) -> None:
            deferred = _deferred()
            super().data_received(data)
            if _deferred() > deferred and not self.transport.is_closing():
                aborted.append(self)
                self.transport.abort()

        def on_url(self, url: bytes) -> None:
            parsed.append(self)
            super().on_url(url)

    async with _server(AbortDeferred) as (port, errors):
        answers = await asyncio.gather(*(_get(port, f"/{i}") for i in range(CLIENTS)))
        assert aborted, "no request was deferred"
        assert not set(aborted) & set(parsed)
        assert len([a for a in answers if a == b""]) == len(aborted)
        assert len([a for a in answers if a.startswith(b"HTTP/1.1 200 ")]) == CLIENTS - len(aborted)
        assert errors == []
