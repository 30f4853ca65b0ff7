"""A small HTTP/1.1 client over asyncio streams, for measuring latency without measuring a client
library: one keep-alive connection per concurrent caller, bodies read by `Content-Length` or
chunked transfer coding, nothing else (no redirects, no TLS, no compression).

`HttpConnection.request` returns a complete response; `HttpConnection.stream` yields the body as it
arrives (what an SSE reader needs). Both raise `HttpError` on a malformed response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass


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
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")

    async def _start(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], asyncio.StreamReader]:
        reader, writer = await self._open()
        writer.write(self._head(method, path, headers, body))
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"bad status line {status_line!r}")
        fields = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        return int(parts[1]), fields, reader

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
