"""The load generator's WebSocket client: frame parsing, masking and the opening handshake."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import socket
import struct
import time

import pytest

from bench.wsclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    ClientConnection,
    FrameParser,
    connect,
    encode_client_frame,
    expected_accept,
)
from tests.bench.conftest import serving


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", head, length) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", head, 126, length) + payload
    return struct.pack("!BBQ", head, 127, length) + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    opcode, length = frame[0] & 0x0F, frame[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack_from("!H", frame, 2)
        offset = 4
    elif length == 127:
        (length,) = struct.unpack_from("!Q", frame, 2)
        offset = 10
    mask = frame[offset : offset + 4]
    data = frame[offset + 4 : offset + 4 + length]
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_parses_frames_of_every_length_encoding() -> None:
    """7-bit, 16-bit and 64-bit payload lengths all come back intact and in order."""
    payloads = [b"x" * 5, b"y" * 300, b"z" * 70_000]
    stream = b"".join(server_frame(OP_TEXT, p) for p in payloads)
    assert FrameParser().feed(stream) == [(OP_TEXT, p) for p in payloads]


def test_reassembles_frames_split_across_reads() -> None:
    """A frame cut at every byte boundary is reported once, when its last byte arrives."""
    frame = server_frame(OP_BINARY, b"hello world" * 20)
    parser = FrameParser()
    seen = []
    for i in range(len(frame)):
        seen += parser.feed(frame[i : i + 1])
    assert seen == [(OP_BINARY, b"hello world" * 20)]


def test_joins_fragments_around_a_control_frame() -> None:
    """Fragments join into one message; a ping between them is reported on its own, first."""
    stream = (
        server_frame(OP_TEXT, b"ab", fin=False)
        + server_frame(OP_PING, b"p")
        + server_frame(OP_CONT, b"cd", fin=False)
        + server_frame(OP_CONT, b"ef")
    )
    assert FrameParser().feed(stream) == [(OP_PING, b"p"), (OP_TEXT, b"abcdef")]


def test_refuses_masked_server_frames_and_orphan_continuations() -> None:
    """Protocol violations raise instead of yielding garbage."""
    with pytest.raises(ValueError, match="masked"):
        FrameParser().feed(b"\x81\x85" + b"\x00" * 9)
    with pytest.raises(ValueError, match="continuation"):
        FrameParser().feed(server_frame(OP_CONT, b"x"))


@pytest.mark.parametrize("size", [0, 3, 125, 126, 65_535, 65_536])
def test_client_frames_are_masked_and_round_trip(size: int) -> None:
    """Client frames carry the mask bit and unmask to the original payload."""
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = encode_client_frame(OP_CLOSE, payload)
    assert frame[0] == 0x80 | OP_CLOSE
    assert frame[1] & 0x80
    assert unmask(frame) == (OP_CLOSE, payload)


def test_accept_matches_rfc_example() -> None:
    """Sec-WebSocket-Accept is computed as in RFC 6455 section 1.3."""
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    assert expected_accept(key) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert expected_accept(key) == base64.b64encode(hashlib.sha1(key + guid).digest())


async def _upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request)
    assert key is not None
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + expected_accept(key[1]) + b"\r\n\r\n"
    )


async def test_greeting_time_is_when_the_first_message_arrived() -> None:
    """`greeted_ns` is the arrival time of the first message (what the sink got with it), not
    the later moment a task awaiting `greeted` runs; a second message does not move it."""

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _upgrade(reader, writer)
        writer.write(server_frame(OP_TEXT, b"hello"))
        await writer.drain()
        await reader.read(1)  # the client's first write after the greeting
        writer.write(server_frame(OP_TEXT, b"again"))
        await writer.drain()
        await reader.read()
        writer.close()

    arrivals: list[tuple[bytes, int]] = []
    both = asyncio.Event()

    def sink(conn: ClientConnection, opcode: int, payload: bytes, now: int) -> None:
        arrivals.append((payload, now))
        if len(arrivals) == 2:
            both.set()

    listener = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        conn = await connect("127.0.0.1", port, "/", sink)
        await conn.greeted
        conn.send(OP_TEXT, b"x")
        await asyncio.wait_for(both.wait(), 10)
        conn.close()
    assert [payload for payload, _ in arrivals] == [b"hello", b"again"]
    assert conn.greeted_ns == arrivals[0][1] < arrivals[1][1]


@pytest.mark.usefixtures("stamping")
async def test_a_message_read_late_carries_when_it_arrived() -> None:
    """A frame that waits 50 ms in the socket because the loop is busy is reported with the
    time it reached the socket (kernel stamp, on the monotonic clock), not the time it was read:
    the generator's own backlog is not the server's latency."""
    written_at: list[int] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _upgrade(reader, writer)
        writer.write(server_frame(OP_TEXT, b"hello"))
        await writer.drain()
        await reader.read(1)  # the client was greeted and asks for the next one
        written_at.append(time.monotonic_ns())
        writer.write(server_frame(OP_TEXT, b"late"))
        await writer.drain()
        # Blocking on purpose: the loop (the client's too) is busy while the frame waits.
        time.sleep(0.05)  # noqa: ASYNC251
        await reader.read()
        writer.close()

    arrivals: list[tuple[bytes, int, int]] = []
    late = asyncio.Event()

    def sink(conn: ClientConnection, opcode: int, payload: bytes, now: int) -> None:
        arrivals.append((payload, now, time.monotonic_ns()))
        if payload == b"late":
            late.set()

    async with serving(server) as port:
        conn = await connect("127.0.0.1", port, "/", sink)
        await conn.greeted
        conn.send(OP_TEXT, b"x")
        await asyncio.wait_for(late.wait(), 10)
        conn.close()
    payload, arrived, read = arrivals[-1]
    assert payload == b"late"
    # Margins of a millisecond and more: the stamp is converted from the wall clock at the read,
    # 50 ms later, and the two clocks may be slewed apart by microseconds meanwhile.
    assert written_at[0] - 1_000_000 <= arrived < written_at[0] + 20_000_000
    assert read - arrived >= 40_000_000
    assert conn.unstamped == 0


async def test_a_frame_larger_than_the_socket_buffer_goes_out_whole() -> None:
    """A client frame the kernel cannot take at once is kept and sent as the socket drains,
    before the close frame that follows it."""
    payload = os.urandom(4 << 20)
    received: asyncio.Future[tuple[tuple[int, bytes], tuple[int, bytes]]] = (
        asyncio.get_running_loop().create_future()
    )

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _upgrade(reader, writer)
        writer.write(server_frame(OP_TEXT, b"hello"))
        await writer.drain()
        await asyncio.sleep(0.1)  # the client's frame fills both socket buffers meanwhile
        data = await reader.read()
        big = 2 + 8 + 4 + len(payload)
        received.set_result((unmask(data[:big]), unmask(data[big:])))
        writer.close()

    async with serving(server) as port:
        conn = await connect("127.0.0.1", port, "/", lambda *_: None)
        await conn.greeted
        conn.send(OP_BINARY, payload)
        conn.close(1001)
        assert not conn.closed.done()  # the frame is still going out
        frame, close = await asyncio.wait_for(received, 10)
    assert frame == (OP_BINARY, payload)
    assert close == (OP_CLOSE, struct.pack("!H", 1001))
    assert await conn.closed == 1001


async def test_a_refused_connection_raises_at_once() -> None:
    """Nobody listening: the connect fails with the kernel's refusal, not a timeout."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        await connect("127.0.0.1", port, "/", lambda *_: None, timeout=5)
