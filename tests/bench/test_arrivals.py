"""Kernel arrival stamps (`bench.arrivals`) and the timed SSE stream built on them
(`bench.httpclient.timed_stream`), over real loopback sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.arrivals import ArrivalSocket
from bench.httpclient import HttpError, timed_stream
from tests.bench.conftest import serving

pytestmark = pytest.mark.usefixtures("stamping")


async def test_the_stamp_is_when_the_bytes_arrived_not_when_they_were_read() -> None:
    """Bytes read 50 ms after they were sent carry a stamp from when they were sent: between
    the send and the read, and well before the read."""
    sends: asyncio.Queue[bytes] = asyncio.Queue()
    sent_at: list[int] = []
    sent = asyncio.Event()

    async def send_on_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await sends.get():
            sent_at.append(time.time_ns())
            writer.write(data)
            await writer.drain()
            sent.set()
        writer.close()

    async with serving(send_on_request) as port:
        sock = await ArrivalSocket.connect("127.0.0.1", port)
        try:
            sends.put_nowait(b"hello")
            await sent.wait()
            await asyncio.sleep(0.05)
            data, stamp = await sock.recv()
            read_at = time.time_ns()
            sends.put_nowait(b"")
        finally:
            sock.close()
    assert data == b"hello"
    assert sent_at[-1] <= stamp <= read_at - 40_000_000


async def test_a_timed_stream_yields_each_chunk_stamped_by_the_read_that_completed_it() -> None:
    """Chunks split over two writes, two chunks in one write, then the last chunk: each payload
    once, in order, stamped no earlier than the write that completed it."""
    writes: list[int] = []

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        pieces = [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n7\r\nfir",
            b"st\r\n\r\n",
            b"5\r\nsecon\r\n5\r\nthird\r\n",
            b"0\r\n\r\n",
        ]
        for piece in pieces:
            if writes:
                await asyncio.sleep(0.02)
            writes.append(time.time_ns())
            writer.write(piece)
            await writer.drain()
        writer.close()

    async with serving(respond) as port:
        status, chunks = await timed_stream("127.0.0.1", port, "POST", "/stream", {}, b"{}")
        received = [chunk async for chunk in chunks]
    assert status == 200
    assert [payload for payload, _ in received] == [b"first\r\n", b"secon", b"third"]
    stamps = [stamp for _, stamp in received]
    assert stamps[0] >= writes[1]  # completed by the second write, not the first
    assert stamps[1] == stamps[2] >= writes[2]


async def test_a_timed_stream_refuses_a_body_it_cannot_time_and_a_cut_one() -> None:
    """A body that is not chunked is refused; a chunked body cut off before its end raises."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        await writer.drain()
        writer.close()

    async with serving(plain) as port:
        with pytest.raises(HttpError, match="chunked"):
            await timed_stream("127.0.0.1", port, "GET", "/")
    async with serving(cut) as port:
        _, chunks = await timed_stream("127.0.0.1", port, "GET", "/")
        with pytest.raises(asyncio.IncompleteReadError):
            async for _ in chunks:
                pass
