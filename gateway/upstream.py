"""HTTP/1.1 calls from one service to another over keep-alive connections: the gateway's session
claims, seq baselines, replays and its public REST proxy.

httpx spent about 0.9 ms of CPU per request here (its client layers, httpcore and the pure-Python
h11 parser); the gateway makes two such calls per WebSocket connect and one per proxied REST
request, so it bounded both the connect rate and the REST latency. This client does only what an
internal call needs — plain HTTP to one host, a bounded pool of keep-alive connections, bodies by
`Content-Length` or chunked coding, one deadline per request — with the C parser uvicorn already
uses (httptools, llhttp), at about a tenth of the cost (docs/performance-notes.md).

Failure is one exception type: `UpstreamError` (`UpstreamTimeout` for an expired deadline). A
request on a reused connection that the peer closed before answering — a keep-alive connection it
had just timed out — is retried once on a new connection when the method is idempotent, as the
request was never processed. Idle connections are dropped before the peer's keep-alive timeout
(uvicorn's is 5 s) to make that race rare.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import httptools

IDLE_SECONDS = 4.0  # under uvicorn's default keep-alive timeout (5 s)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")  # in a method, target or header name
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer with a valid HTTP response."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the request's deadline."""


class _Stale(UpstreamError):
    """A reused connection was closed by the peer before any byte of the answer arrived."""


@dataclass(slots=True)
class Response:
    """A complete answer. Header names are lower-case; a repeated header keeps its last value."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (the pool guarantees it)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._answer: asyncio.Future[Response] | None = None
        self._response = Response(0)
        self._header_name = b""
        self._body: list[bytes] = []
        self._size = 0
        self._received = False
        self._head_only = False
        self.reusable = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The parser holds this connection's callbacks: a reference cycle the garbage collector
        # would otherwise have to find, once per closed connection.
        self._parser = None
        if self._answer is not None and not self._answer.done():
            if not self._received:
                self._answer.set_exception(_Stale("connection closed before the answer"))
            else:
                self._answer.set_exception(UpstreamError("connection closed mid-answer"))

    def data_received(self, data: bytes) -> None:
        self._received = True
        parser = self._parser
        if parser is None or self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid HTTP response: {exc}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._response.status_code = self._parser.get_status_code()
        if self._head_only:
            # No body follows an answer to HEAD, whatever Content-Length says; the parser cannot
            # know that, so the connection is not reused.
            self.reusable = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            self._fail(UpstreamError(f"answer larger than {MAX_RESPONSE_BYTES} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self.reusable = self._parser.should_keep_alive()
        self._finish()

    # Requests

    def send(self, head: bytes, body: bytes, head_only: bool) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._response, self._body, self._size = Response(0), [], 0
        self._received, self._head_only, self.reusable = False, head_only, False
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(head + body if body else head)
        return self._answer

    def _finish(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._response.content = b"".join(self._body)
            self._answer.set_result(self._response)

    def _fail(self, error: UpstreamError) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """A pool of at most `max_connections` keep-alive connections to the service at `base_url`
    (`http://host:port`). Safe for concurrent use from one event loop; `aclose()` is idempotent."""

    def __init__(self, base_url: str, *, timeout: float, max_connections: int = 100) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self._host_header = f"host: {parts.netloc}\r\n"
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        if params:
            path = f"{path}?{urlencode(params)}"
        return await self.request("GET", path, headers=headers)

    async def post(
        self, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        return await self.request("POST", path, json=json, headers=headers)

    async def request(
        self,
        method: str,
        target: str,
        *,
        content: bytes = b"",
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send `method target` (target: path and query, already encoded) and read the answer.

        Raises `UpstreamTimeout` after `timeout` seconds, `UpstreamError` on any other failure.
        """
        if self._closed:
            raise UpstreamError("client closed")
        if json is not None:
            content = jsonlib.dumps(json, separators=(",", ":")).encode()
            headers = {**(headers or {}), "content-type": "application/json"}
        head = self._head(method, target, headers or {}, content)
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                return await self._exchange(method, head, content)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.host}:{self.port} did not answer within {self.timeout} s"
            ) from None

    async def _exchange(self, method: str, head: bytes, content: bytes) -> Response:
        retry, fresh = method in _IDEMPOTENT, False
        while True:
            conn, reused = await self._connection(fresh)
            try:
                response = await conn.send(head, content, method == "HEAD")
            except _Stale:
                conn.close()
                if not (retry and reused):
                    raise UpstreamError(f"{self.host}:{self.port} closed the connection") from None
                retry, fresh = False, True  # once, on a new connection
                continue
            except BaseException:
                conn.close()  # cancelled or failed mid-exchange: its state is unknown
                raise
            break
        if conn.reusable and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _connection(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """A live idle connection (most recently used first) or a new one; True if reused."""
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return conn, False

    def _head(self, method: str, target: str, headers: Mapping[str, str], content: bytes) -> bytes:
        if _FORBIDDEN.search(method) or _FORBIDDEN.search(target):
            raise UpstreamError(f"invalid request line {method} {target!r}")
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_header]
        for name, value in headers.items():
            if _FORBIDDEN.search(name) or "\r" in value or "\n" in value:
                raise UpstreamError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        if content or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(content)}\r\n")
        lines.append("\r\n")
        try:
            return "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise UpstreamError("request line or header is not latin-1") from None

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
