"""A minimal, fast WebSocket client for the load generator: one small object per connection.

The benchmark must not measure its own client. A `websockets` client costs a task, futures and a
queue per connection and per message; here a connection is one object on its own socket whose
read callback parses frames in place and hands each complete message to a shared `sink`
callback with the arrival time. Ten thousand connections fit comfortably in one process. The
arrival time is when the kernel received the bytes (`SO_TIMESTAMPNS`, `bench.arrivals`), not
when this process read them: one generator reads thousands of connections on the load core, and
a broadcast's last client would otherwise be timed after the generator worked through the rest.

Protocol coverage is what a benchmark client needs, per RFC 6455: the opening handshake (with
`Sec-WebSocket-Accept` checked), unmasked server frames of any length, fragmented messages, ping
(answered with pong), pong (reported, for stall probes) and close (answered, code recorded).
Client frames are masked as the RFC requires. Frame parsing (`FrameParser`) is pure code.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

from bench import arrivals

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


class HandshakeError(Exception):
    """The server refused the upgrade or answered something that is not a WebSocket."""


class FrameParser:
    """Incremental RFC 6455 frame parser for server-to-client (unmasked) frames.

    `feed(data)` returns the complete `(opcode, payload)` messages that `data` finished, in order;
    fragments of a data message are joined and reported with the first fragment's opcode. Control
    frames may arrive between fragments and are reported on their own. Raises `ValueError` on a
    masked server frame or a continuation without a start.
    """

    __slots__ = ("_buffer", "_fragment_op", "_fragments")

    def __init__(self) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragment_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            b0, b1 = buffer[pos], buffer[pos + 1]
            if b1 & 0x80:
                raise ValueError("server frames must not be masked")
            length, head = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, pos + 2)
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, pos + 2)
                head = 10
            if end - pos < head + length:
                break
            payload = buffer[pos + head : pos + head + length]
            pos += head + length
            self._emit(b0 & 0x80, b0 & 0x0F, payload, out)
        self._buffer = buffer[pos:]
        return out

    def _emit(self, fin: int, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode >= OP_CLOSE:
            out.append((opcode, payload))
        elif opcode == OP_CONT:
            if not self._fragments:
                raise ValueError("continuation frame without a message to continue")
            self._fragments.append(payload)
            if fin:
                out.append((self._fragment_op, b"".join(self._fragments)))
                self._fragments = []
        elif fin:
            out.append((opcode, payload))
        else:
            self._fragment_op, self._fragments = opcode, [payload]


def encode_client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked, final client frame (RFC 6455 section 5.3: clients always mask)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return head + mask + masked


def handshake_request(host: str, port: int, target: str, key: bytes) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def expected_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


# sink(connection, opcode, payload, arrival_ns) receives every text/binary message and pong.
Sink = Callable[["ClientConnection", int, bytes, int], None]

_READ_SIZE: Final = 1 << 16


class ClientConnection:
    """One WebSocket connection on its own non-blocking socket, read and written through the
    running loop's `add_reader`/`add_writer` (`recvmsg` has no transport to go through).
    `opened` resolves after the handshake (or fails with `HandshakeError`/`ConnectionError`),
    `greeted` when the first data message arrives (at `greeted_ns`), `closed` with the close
    code (1006 when the TCP connection dropped without a close frame). `close()` is idempotent.

    Arrival times are monotonic ns of when the kernel received the bytes (`bench.arrivals`),
    or of the read when a segment came unstamped (`unstamped` counts those reads)."""

    __slots__ = (
        "_accept",
        "_fd",
        "_handshake_buffer",
        "_loop",
        "_outgoing",
        "_parser",
        "_sink",
        "_sock",
        "close_code",
        "closed",
        "greeted",
        "greeted_ns",
        "index",
        "opened",
        "unstamped",
    )

    def __init__(
        self, sock: socket.socket, request: bytes, key: bytes, sink: Sink, index: int
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._accept: bytes | None = expected_accept(key)
        self._sink = sink
        self._parser = FrameParser()
        self._handshake_buffer = b""
        self._outgoing = bytearray()
        self.index = index
        self.opened: asyncio.Future[None] = loop.create_future()
        self.greeted: asyncio.Future[None] = loop.create_future()  # first message arrived
        self.greeted_ns = 0  # monotonic ns when the first message arrived
        self.closed: asyncio.Future[int] = loop.create_future()
        self.close_code: int | None = None
        self.unstamped = 0
        loop.add_reader(self._fd, self._readable)
        self._write(request)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data, stamp = arrivals.receive(sock, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        if stamp:
            # The stamp is wall-clock; the marks and every other time here are monotonic.
            now = stamp - time.time_ns() + time.monotonic_ns()
        else:
            now = time.monotonic_ns()
            self.unstamped += 1
        self._received(data, now)

    def _received(self, data: bytes, now: int) -> None:
        if self._accept is not None:
            data = self._finish_handshake(data)
            if not data:
                return
        try:
            messages = self._parser.feed(data)
        except ValueError:
            self._abort(1002)
            return
        for opcode, payload in messages:
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.send(OP_CLOSE, payload[:2])
                self._abort(code)
                return
            else:
                if not self.greeted.done():
                    self.greeted_ns = now
                    self.greeted.set_result(None)
                self._sink(self, opcode, payload, now)

    def _finish_handshake(self, data: bytes) -> bytes:
        """Consume the HTTP 101 answer; return the bytes after it (frames that came along)."""
        self._handshake_buffer += data
        head, sep, rest = self._handshake_buffer.partition(b"\r\n\r\n")
        if not sep:
            return b""
        self._handshake_buffer = b""
        status_line, _, headers = head.partition(b"\r\n")
        accept, self._accept = self._accept or b"", None
        if not status_line.startswith(b"HTTP/1.1 101"):
            self._fail(HandshakeError(status_line.decode(errors="replace")))
            return b""
        if accept not in headers:
            self._fail(HandshakeError("Sec-WebSocket-Accept missing or wrong"))
            return b""
        if not self.opened.done():
            self.opened.set_result(None)
        return rest

    def send(self, opcode: int, payload: bytes = b"") -> None:
        if self._sock is not None and self.close_code is None:
            self._write(encode_client_frame(opcode, payload))

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        if not self._outgoing:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._loop.add_writer(self._fd, self._writable)
        self._outgoing += data

    def _writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._outgoing[:sent]
        if not self._outgoing:
            self._loop.remove_writer(self._fd)
            if self.close_code is not None:
                self._lost(None)

    def close(self, code: int = 1000) -> None:
        if self.close_code is None and self._sock is not None:
            self.send(OP_CLOSE, struct.pack("!H", code))
            self._abort(code)

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._abort(1006)

    def _abort(self, code: int) -> None:
        """Close once what is written has gone out (at once if it has)."""
        if self.close_code is None:
            self.close_code = code
        if self._sock is not None and not self._outgoing:
            self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._loop.remove_reader(self._fd)
        if self._outgoing:
            self._loop.remove_writer(self._fd)
            self._outgoing.clear()
        sock.close()
        if self.close_code is None:
            self.close_code = 1006
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)


async def connect(
    host: str, port: int, target: str, sink: Sink, index: int = 0, timeout: float = 15.0
) -> ClientConnection:
    """Open a connection to `ws://host:port{target}` and wait for the handshake to finish.
    Raises `HandshakeError`, `ConnectionError`/`OSError`, or `TimeoutError` after `timeout`."""
    return await connect_from(None, host, port, target, sink, index, timeout)


async def connect_from(
    source: str | None,
    host: str,
    port: int,
    target: str,
    sink: Sink,
    index: int = 0,
    timeout: float = 15.0,
) -> ClientConnection:
    """`connect`, from the local address `source` (None: the kernel's choice) — a proxy that
    limits connections per client address sees many clients."""
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection: ClientConnection | None = None
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        arrivals.stamping(sock)
        if source is not None:
            sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await _connected(loop, sock, (host, port))
            request = handshake_request(host, port, target, key)
            connection = ClientConnection(sock, request, key, sink, index)
            await connection.opened
    except BaseException:
        if connection is not None:
            connection.close(1001)
        else:
            sock.close()
        raise
    return connection


async def _connected(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int]
) -> None:
    """Connect the non-blocking `sock` to `address`. On loopback the kernel mostly completes the
    handshake inside the `connect` call: checked at once, the loop is asked to wait only when it
    did not (a storm's 10,000 reconnections spare a future and a writer's registration each)."""
    error = sock.connect_ex(address)
    if error == errno.EINPROGRESS:
        try:
            sock.getpeername()
            return
        except OSError:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not error:
            await loop.sock_connect(sock, address)  # still in progress: wait for it
            return
    if error:
        raise OSError(error, os.strerror(error))
