"""gateway.upstream against a real uvicorn server on a loopback port, and against raw TCP servers
that misbehave in the ways a keep-alive client must survive."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.upstream import Upstream, UpstreamError, UpstreamTimeout

_open_now = 0
_open_most = 0


async def _echo(request: Request) -> Response:
    assert request.client is not None
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
            "client_port": request.client.port,
        }
    )


async def _slow(request: Request) -> Response:
    global _open_now, _open_most
    _open_now += 1
    _open_most = max(_open_most, _open_now)
    try:
        await asyncio.sleep(float(request.query_params.get("seconds", "0.2")))
    finally:
        _open_now -= 1
    return JSONResponse({"slept": True})


async def _chunked(request: Request) -> Response:
    async def pieces() -> AsyncIterator[bytes]:
        for index in range(50):
            yield f"piece {index};".encode()

    return StreamingResponse(pieces(), media_type="text/plain")


APP = Starlette(
    routes=[
        Route("/echo", _echo, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
        Route("/slow", _slow),
        Route("/chunked", _chunked),
    ]
)


def _bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def uvicorn_server() -> AsyncIterator[str]:
    sock = _bound_socket()
    sock.listen()  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(APP, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with uvicorn_server() as url:
        yield url


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    tcp = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        tcp.close()


async def test_get_sends_path_query_and_headers(server: str) -> None:
    """A GET carries its path, encoded params and headers; the JSON answer is parsed."""
    client = Upstream(server, timeout=5)
    answer = await client.get(
        "/echo", params={"user": "a b", "n": 3}, headers={"authorization": "Bearer t"}
    )
    await client.aclose()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert (body["method"], body["path"], body["query"]) == ("GET", "/echo", "user=a+b&n=3")
    assert body["headers"]["authorization"] == "Bearer t"
    assert body["headers"]["host"] == server.removeprefix("http://")


async def test_post_json_and_raw_content(server: str) -> None:
    """`json=` is sent compact with its content type; `content=` is sent as is."""
    client = Upstream(server, timeout=5)
    posted = (await client.post("/echo", json={"a": [1, 2]})).json()
    put = (await client.request("PUT", "/echo", content=b"raw bytes")).json()
    empty = (await client.request("POST", "/echo")).json()
    await client.aclose()
    assert posted["body"] == '{"a":[1,2]}'
    assert posted["headers"]["content-type"] == "application/json"
    assert (put["method"], put["body"]) == ("PUT", "raw bytes")
    assert (empty["body"], empty["headers"]["content-length"]) == ("", "0")


async def test_keep_alive_reuses_one_connection(server: str) -> None:
    """Sequential requests travel on one connection (same client port at the server)."""
    client = Upstream(server, timeout=5)
    ports = {(await client.get("/echo")).json()["client_port"] for _ in range(5)}
    await client.aclose()
    assert len(ports) == 1


async def test_closed_connection_freed_without_the_collector(server: str) -> None:
    """A connection closed after its answer is freed by reference counting: its response parser
    (which holds the connection's callbacks) is let go when the connection is lost."""
    client = Upstream(server, timeout=5)
    await client.get("/echo")
    freed = asyncio.Event()
    weakref.finalize(client._idle[0], freed.set)
    gc.disable()
    try:
        await client.aclose()
        await asyncio.wait_for(freed.wait(), 5)  # once uvloop has run `connection_lost`
    finally:
        gc.enable()


def test_works_on_uvloop() -> None:
    """Services run on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def exchange() -> list[int]:
        async with uvicorn_server() as url:
            client = Upstream(url, timeout=5)
            answers = [await client.get("/echo"), await client.post("/echo", json={})]
            await client.aclose()
        return [a.status_code for a in answers]

    assert uvloop.run(exchange()) == [200, 200]


async def test_chunked_answer_is_read_whole(server: str) -> None:
    """A chunked (streamed) answer arrives complete, and the connection stays usable."""
    client = Upstream(server, timeout=5)
    answer = await client.get("/chunked")
    again = await client.get("/echo")
    await client.aclose()
    assert answer.content == b"".join(f"piece {i};".encode() for i in range(50))
    assert again.status_code == 200


async def test_head_does_not_wait_for_a_body(server: str) -> None:
    """HEAD returns at the headers, although Content-Length announces a body."""
    client = Upstream(server, timeout=2)
    answer = await client.request("HEAD", "/echo")
    after = await client.get("/echo")
    await client.aclose()
    assert (answer.status_code, answer.content) == (200, b"")
    assert int(answer.headers["content-length"]) > 0
    assert after.json()["method"] == "GET"


async def test_timeout_raises_and_pool_recovers(server: str) -> None:
    """A slow answer raises UpstreamTimeout at the deadline; the next request works."""
    client = Upstream(server, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await client.get("/slow", params={"seconds": 2})
    assert loop.time() - started < 1.0
    assert (await client.get("/echo")).status_code == 200
    await client.aclose()


async def test_concurrency_is_bounded_by_the_pool(server: str) -> None:
    """Ten concurrent requests through a pool of two never hold more than two at the server."""
    global _open_most
    _open_most = 0
    client = Upstream(server, timeout=5, max_connections=2)
    answers = await asyncio.gather(
        *(client.get("/slow", params={"seconds": "0.05"}) for _ in range(10))
    )
    await client.aclose()
    assert [a.status_code for a in answers] == [200] * 10
    assert _open_most == 2


async def test_unreachable_upstream_is_an_upstream_error() -> None:
    """Nothing listening: UpstreamError, not an OSError."""
    sock = _bound_socket()  # bound, never listening: connections are refused
    client = Upstream(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=2)
    with pytest.raises(UpstreamError, match="cannot connect"):
        await client.get("/")
    sock.close()


async def test_malformed_answer_is_an_upstream_error() -> None:
    """Bytes that are not HTTP raise UpstreamError."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as url:
        client = Upstream(url, timeout=2)
        with pytest.raises(UpstreamError, match="invalid HTTP response"):
            await client.get("/")
        await client.aclose()


def _keep_alive_once() -> tuple[Handler, list[int]]:
    """A server that answers the first request of each connection, then closes the connection
    when the next request arrives, without answering (a keep-alive timeout racing a request)."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    return handler, connections


async def test_idempotent_request_is_retried_once_on_a_closed_keep_alive() -> None:
    """A GET on a reused connection the peer closes unanswered is sent again on a new one."""
    handler, connections = _keep_alive_once()
    async with raw_server(handler) as url:
        client = Upstream(url, timeout=2)
        assert (await client.get("/")).content == b"ok"
        assert (await client.get("/")).content == b"ok"
        await client.aclose()
    assert len(connections) == 2


async def test_post_is_not_retried_on_a_closed_keep_alive() -> None:
    """A POST may have been processed: the failure is reported, not retried."""
    handler, connections = _keep_alive_once()
    async with raw_server(handler) as url:
        client = Upstream(url, timeout=2)
        assert (await client.post("/", json={})).content == b"ok"
        with pytest.raises(UpstreamError, match="closed the connection"):
            await client.post("/", json={})
        await client.aclose()
    assert len(connections) == 1


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a b", {}),
        ("/a\r\nX-Injected: 1", {}),
        ("/", {"x-a": "v\r\nX-Injected: 1"}),
        ("/", {"bad name": "v"}),
        ("/", {"x-a": "\u2603"}),
    ],
)
async def test_request_splitting_is_refused(target: str, headers: dict[str, str]) -> None:
    """Line breaks, spaces in the target or header names, and non-latin-1 values never reach the
    wire."""
    client = Upstream("http://127.0.0.1:9", timeout=1)
    with pytest.raises(UpstreamError):
        await client.request("GET", target, headers=headers)


def test_base_url_must_be_plain_http() -> None:
    """Only `http://host[:port]` is accepted."""
    with pytest.raises(ValueError, match="http://host:port"):
        Upstream("https://example.test", timeout=1)
