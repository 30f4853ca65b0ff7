"""When received bytes reached this machine's socket, as the kernel stamped them (SO_TIMESTAMPNS),
not when this process got round to reading them.

The chat scenario's client reads 200 SSE streams and the Redis floor's probe stream in one event
loop on the load core, beside the agent workers; its own wake-ups, and the turns it spends on
other streams' bytes first, are neither the gateway's nor Redis's, yet an arrival time taken when
the client reads includes them. With SO_TIMESTAMPNS the kernel stamps each segment it receives,
and `recvmsg` returns the stamp of the last segment a read covers, in wall-clock nanoseconds
(CLOCK_REALTIME: the clock of Redis's stream entry ids). `ArrivalSocket` is a connected TCP
socket read that way through the running event loop. The load generator's WebSocket client
(`bench.wsclient`) reads its connections the same way (`receive`): one generator process reads
10,000 of them on the load core, and the last client of a broadcast was otherwise timed when the
generator had worked through the other 9,999.
"""

from __future__ import annotations

import asyncio
import socket
import struct

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value; not exported everywhere
_TIMESPEC = struct.Struct("qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


def stamping(sock: socket.socket) -> None:
    """Ask the kernel to stamp what `sock` receives (see the module's docstring)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def receive(sock: socket.socket, size: int) -> tuple[bytes, int]:
    """One `recvmsg` on a stamping socket: the bytes and `kernel_stamp` of what came with them
    (raises `BlockingIOError` when nothing is waiting)."""
    data, ancillary, _, _ = sock.recvmsg(size, _ANCILLARY)
    return data, kernel_stamp(ancillary)


def kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The wall-clock stamp (ns) in a `recvmsg`'s ancillary data, 0 if it carries none (the
    kernel starts stamping a moment after the first socket asks)."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds: int
            nanoseconds: int
            seconds, nanoseconds = _TIMESPEC.unpack(payload[: _TIMESPEC.size])
            return seconds * 1_000_000_000 + nanoseconds
    return 0


class ArrivalSocket:
    """A connected, non-blocking TCP socket whose reads carry their kernel arrival stamps."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, host: str, port: int) -> ArrivalSocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            stamping(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def sendall(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self, size: int = 1 << 16) -> tuple[bytes, int]:
        """The next bytes received and the kernel's wall-clock stamp (ns) of the last segment
        among them, 0 if none came with them. Raises `asyncio.IncompleteReadError` once the peer
        has closed: every reader here reads a reply it is owed."""
        while True:
            try:
                data, stamp = receive(self.sock, size)
            except BlockingIOError:
                await self._readable()
                continue
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            return data, stamp

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self.sock.fileno()
        loop.add_reader(fd, _resolve, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    def close(self) -> None:
        self.sock.close()


def _resolve(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
