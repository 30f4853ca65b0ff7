"""`gateway.chat.SSEResponse` on a real uvicorn: the SSE headers (and the middleware's, added to
the response start), chunks as they come, body chunks written past the middleware's `send`
wrappers on the gateway's HTTP protocol (through them on uvicorn's own), a client that goes
away closing the body, and the body's own chunk writer (`ChunkWriter`): in order with what the
body yields, and refusing once the client's socket is backed up or the client is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.chat import ChunkWriter, SSEResponse
from gateway.httpprotocol import GatewayHttpProtocol


class Body:
    """The response's body: one chunk, then a second once `release` is set (or never, with
    `forever`); `closed` is set when the response closes it. `writer` is its response's."""

    def __init__(self, forever: bool = False) -> None:
        self.forever = forever
        self.release, self.closed = asyncio.Event(), asyncio.Event()
        self.writer = ChunkWriter()

    async def chunks(self) -> AsyncGenerator[bytes]:
        try:
            yield b"data: 1\n\n"
            await (asyncio.Event() if self.forever else self.release).wait()
            yield b"data: 2\n\n"
        finally:
            self.closed.set()


class CountBodies:
    """Middleware counting the body messages the application sends through it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.bodies = app, 0
        COUNTERS.append(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            self.bodies += message["type"] == "http.response.body"
            await send(message)

        await self.app(scope, receive, counted)


COUNTERS: list[CountBodies] = []


@contextlib.asynccontextmanager
async def _serve(body: Body, protocol: type[HttpToolsProtocol]) -> AsyncIterator[str]:
    async def endpoint(request: Request) -> Response:
        return SSEResponse(body.chunks(), body.writer)

    app = Starlette(
        routes=[Route("/sse", endpoint)],
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"]), Middleware(CountBodies)],
    )
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol(config, state, {}), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/sse"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("protocol", "through_middleware"), [(GatewayHttpProtocol, 0), (HttpToolsProtocol, 3)]
)
async def test_chunks_stream_with_headers_past_the_middleware(
    protocol: type[HttpToolsProtocol], through_middleware: int
) -> None:
    """Each chunk reaches the client as it is produced, chunked, with the SSE headers and CORS's;
    on the gateway's protocol the body messages skip the middleware (the start does not)."""
    body = Body()
    COUNTERS.clear()
    async with (
        _serve(body, protocol) as url,
        httpx.AsyncClient() as client,
    ):
        async with client.stream("GET", url, headers={"Origin": "http://a.example"}) as response:
            headers: Any = response.headers
            assert headers["content-type"] == "text/event-stream; charset=utf-8"
            assert headers["cache-control"] == "no-cache"
            assert headers["x-accel-buffering"] == "no"
            assert headers["access-control-allow-origin"] == "*"
            assert headers["transfer-encoding"] == "chunked"
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"data: 1\n\n"
            body.release.set()
            assert [chunk async for chunk in chunks] == [b"data: 2\n\n"]
        await body.closed.wait()
        assert [counter.bodies for counter in COUNTERS] == [through_middleware]


async def test_a_client_that_goes_away_closes_the_body() -> None:
    """The body is closed (its reader leaves the shared read) once the client disconnects, while
    it waits for its next chunk."""
    body = Body(forever=True)
    async with _serve(body, GatewayHttpProtocol) as url, httpx.AsyncClient() as client:
        async with client.stream("GET", url) as response:
            assert await anext(response.aiter_raw()) == b"data: 1\n\n"
        await body.closed.wait()
        assert body.closed.is_set()


class WritingBody(Body):
    """One chunk; once released, one written by the response's writer (yielded instead if the
    writer declines), then a last chunk."""

    wrote: bool | None = None

    async def chunks(self) -> AsyncGenerator[bytes]:
        try:
            yield b"data: 1\n\n"
            await self.release.wait()
            self.wrote = self.writer.write(b"data: w\n\n")
            if not self.wrote:
                yield b"data: w\n\n"
            yield b"data: 2\n\n"
        finally:
            self.closed.set()


@pytest.mark.parametrize(
    ("protocol", "writes"), [(GatewayHttpProtocol, True), (HttpToolsProtocol, False)]
)
async def test_the_body_writes_chunks_itself_in_order(
    protocol: type[HttpToolsProtocol], writes: bool
) -> None:
    """On the gateway's protocol the writer puts a chunk on the wire at once, between the body's
    own chunks; on uvicorn's it declines (no writer offered) and the body sends it instead."""
    body = WritingBody()
    assert not body.writer.write(b"data: 0\n\n")  # nothing is written before the response starts
    async with _serve(body, protocol) as url, httpx.AsyncClient() as client:
        async with client.stream("GET", url) as response:
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"data: 1\n\n"
            body.release.set()
            assert b"".join([chunk async for chunk in chunks]) == b"data: w\n\ndata: 2\n\n"
        assert body.wrote is writes


class FloodingBody(Body):
    """Writes 64 KiB chunks through the writer until it declines (the client does not read),
    then yields a last chunk; `written` counts the chunks the writer took."""

    CHUNK = b"data: " + b"x" * (64 * 1024 - 8) + b"\n\n"
    written = 0

    async def chunks(self) -> AsyncGenerator[bytes]:
        try:
            yield b"data: 1\n\n"
            while self.writer.write(self.CHUNK):
                self.written += 1
                assert self.written < 10_000, "the writer never declined"
                await asyncio.sleep(0)
            self.release.set()
            yield b"data: last\n\n"
            await asyncio.Event().wait()
        finally:
            self.closed.set()


async def test_the_writer_declines_while_the_client_is_backed_up_and_once_it_is_gone() -> None:
    """A client that does not read makes the writer decline (its socket and uvicorn's buffer
    full) instead of buffering without bound; what it took and the body's next chunk then reach
    the client whole and in order. After the client has gone it declines too."""
    body = FloodingBody()
    async with _serve(body, GatewayHttpProtocol) as url, httpx.AsyncClient() as client:
        async with client.stream("GET", url) as response:
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"data: 1\n\n"
            await body.release.wait()
            assert body.written > 0
            expected = body.CHUNK * body.written + b"data: last\n\n"
            received = bytearray()
            while len(received) < len(expected):
                received += await anext(chunks)
            assert received == expected
        await body.closed.wait()
    assert not body.writer.write(b"data: after\n\n")
