"""A small HTTP/1.1 client over asyncio streams, for measuring latency without measuring a client
library: one keep-alive connection per concurrent caller, bodies read by `Content-Length` or
chunked transfer coding, nothing else (no redirects, no TLS, no compression).

`HttpConnection.request` returns a complete response; `HttpConnection.stream` yields the body as it
arrives (what an SSE reader needs). Both raise `HttpError` on a malformed response. `timed_stream`
is `stream` on a connection of its own whose reads carry the kernel's arrival stamps
(`bench.arrivals`): each piece of a chunked body comes with when its last byte reached the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass

from bench.arrivals import ArrivalSocket


class HttpError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """One connection to `host:port`. Not safe for concurrent requests; `close()` is idempotent."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    def _head(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        return _request(self.host, self.port, method, path, headers, body)

    async def _start(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], asyncio.StreamReader]:
        reader, writer = await self._open()
        writer.write(self._head(method, path, headers, body))
        status, fields = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        return status, fields, reader

    async def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        status, fields, reader = await self._start(method, path, headers or {}, body)
        chunks = [chunk async for chunk in self._body(fields, reader)]
        if fields.get("connection", "").lower() == "close":
            self.close()
        return Response(status, fields, b"".join(chunks))

    async def stream(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, AsyncIterator[bytes]]:
        """Send a request; return the status and an iterator over body pieces as they arrive."""
        status, fields, reader = await self._start(method, path, headers or {}, body)
        return status, self._body(fields, reader)

    async def _body(
        self, fields: dict[str, str], reader: asyncio.StreamReader
    ) -> AsyncIterator[bytes]:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpError(f"bad chunk size {size_line!r}") from None
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                chunk = await reader.readexactly(size + 2)
                yield chunk[:-2]
        elif "content-length" in fields:
            yield await reader.readexactly(int(fields["content-length"]))
        else:
            while piece := await reader.read(1 << 16):
                yield piece
            self.close()


async def timed_stream(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, AsyncGenerator[tuple[bytes, int], None]]:
    """Send a request on a connection of its own; return the status and an iterator over the
    chunked body's chunks, each with the kernel's wall-clock stamp (ns) of the segment that
    completed it (`bench.arrivals`; 0 if unstamped). The connection closes when the iterator
    ends. Only chunked bodies: an SSE answer's."""
    sock = await ArrivalSocket.connect(host, port)
    try:
        await sock.sendall(_request(host, port, method, path, headers or {}, body))
        buffer, stamp = bytearray(), 0
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            data, stamp = await sock.recv()
            buffer += data
        status, fields = _parse_head(bytes(buffer[: end + 4]))
        if "chunked" not in fields.get("transfer-encoding", "").lower():
            raise HttpError("a timed stream reads chunked bodies only")
    except BaseException:
        sock.close()
        raise
    del buffer[: end + 4]
    return status, _timed_chunks(sock, buffer, stamp)


async def _timed_chunks(
    sock: ArrivalSocket, buffer: bytearray, stamp: int
) -> AsyncGenerator[tuple[bytes, int], None]:
    try:
        while True:
            while (end := buffer.find(b"\r\n")) >= 0:
                try:
                    size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpError(f"bad chunk size {bytes(buffer[:end])!r}") from None
                if len(buffer) < end + size + 4:
                    break  # the chunk's data and its CRLF are not all here yet
                if size == 0:
                    return
                yield bytes(buffer[end + 2 : end + 2 + size]), stamp
                del buffer[: end + size + 4]
            data, stamp = await sock.recv()
            buffer += data
    finally:
        sock.close()


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the header fields (names lowercased) of a response's head."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"bad status line {status_line!r}")
    fields = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields
