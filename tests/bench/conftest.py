"""What the benchmark harness's tests share: a loopback server for a handler, and the kernel's
arrival stamping switched on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bench.arrivals import ArrivalSocket

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def stamping() -> AsyncIterator[None]:
    """Stamping on while a test runs: the kernel turns it on for the first socket that asks a
    moment later (a deferred work item) and off once none asks. One socket asks throughout,
    and bytes are exchanged until they come stamped."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1):
            writer.write(data)
            await writer.drain()
        writer.close()

    async with serving(echo) as port:
        sock = await ArrivalSocket.connect("127.0.0.1", port)
        try:
            for _ in range(10_000):
                await sock.sendall(b".")
                if (await sock.recv(1))[1]:
                    break
            else:
                pytest.fail("the kernel never stamped a received segment")
            yield
        finally:
            sock.close()
