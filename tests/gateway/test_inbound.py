"""The inbound budget (`gateway.turns`, for closes): when more adopted connections' clients
close in one event-loop turn than the budget answers, the rest are answered on later turns —
each with its client's own code, handed to the reader with it —, and so are hang-ups without a
close frame; live traffic is never held; and a connection lost while its close waits is never
parsed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from prometheus_client import REGISTRY
from uvicorn.server import ServerState
from websockets.asyncio.client import ClientConnection, connect

from gateway.wsprotocol import EXTENSION, INBOUND_BUDGET, GatewayWebSocketProtocol, text_frame

CLIENTS = 3 * INBOUND_BUDGET  # more than one turn's budget, all sending in the same turn


def _deferred() -> float:
    value = REGISTRY.get_sample_value("gateway_inbound_deferred_total")
    assert value is not None
    return value


class _Echo:
    """A reader of an adopted connection, as the gateway's connection is: echoes each text
    message through the sink, records the events, and counts the connection's end in `ends`."""

    def __init__(self, sink: GatewayWebSocketProtocol, ends: _Ends) -> None:
        self.sink = sink
        self.ends = ends
        self.events: list[dict[str, Any]] = []

    def put_nowait(self, item: Any) -> None:
        self.events.append(dict(item))
        if item["type"] == "websocket.receive":
            self.sink.write_frames(text_frame(item["text"].encode()))
            # Not from within `put_nowait`: the protocol pauses reading right after it.
            asyncio.get_running_loop().call_soon(self.sink.resume_reading)
        elif len([e for e in self.events if e["type"] == "websocket.disconnect"]) == 1:
            self.ends.add()


class _Ends:
    """Counts adopted connections that received their disconnect, and how many did in each
    event-loop turn (`per_turn`); `done` once all did."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()
        self.per_turn: list[int] = []
        self._this_turn = 0

    def add(self) -> None:
        self.count += 1
        if not self._this_turn:
            # Runs after every callback already queued for this turn, before the next poll.
            asyncio.get_running_loop().call_soon(self._turn_ended)
        self._this_turn += 1
        if self.count == self.expected:
            self.done.set()

    def _turn_ended(self) -> None:
        self.per_turn.append(self._this_turn)
        self._this_turn = 0


@contextlib.asynccontextmanager
async def _echo_server(
    protocol: Callable[[uvicorn.Config, ServerState, dict[str, Any]], asyncio.Protocol],
) -> AsyncIterator[tuple[int, list[_Echo], _Ends, list[dict[str, Any]]]]:
    """A loopback server whose application adopts every connection with an `_Echo` reader and
    returns; yields the port, the readers (in adoption order), the count of ends and the
    exceptions the loop reported meanwhile."""
    readers: list[_Echo] = []
    ends = _Ends(CLIENTS)
    errors: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        sink = scope["extensions"][EXTENSION]["sink"]
        reader = _Echo(sink, ends)
        readers.append(reader)
        sink.adopt(reader)

    config = uvicorn.Config(app, ws=GatewayWebSocketProtocol, lifespan="off", log_level="error")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    server = await loop.create_server(lambda: protocol(config, state, {}), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], readers, ends, errors
    finally:
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(None)


async def _clients(port: int) -> list[ClientConnection]:
    return list(
        await asyncio.gather(
            *(connect(f"ws://127.0.0.1:{port}/", compression=None) for _ in range(CLIENTS))
        )
    )


async def test_messages_never_deferred_and_answered_in_order() -> None:
    """Three messages from each of three budgets' worth of clients, sent in one turn: none is
    set aside (the deferred counter stays), and every client gets its three echoes in order."""
    before = _deferred()
    async with _echo_server(GatewayWebSocketProtocol) as (port, _, ends, errors):
        clients = await _clients(port)

        async def talk(i: int, ws: ClientConnection) -> list[str]:
            for n in range(3):
                await ws.send(f"{i}-{n}")
            return [str(await ws.recv()) for _ in range(3)]

        answers = await asyncio.gather(*(talk(i, ws) for i, ws in enumerate(clients)))
        assert answers == [[f"{i}-{n}" for n in range(3)] for i in range(CLIENTS)]
        assert _deferred() == before
        await asyncio.gather(*(ws.close() for ws in clients))
        await ends.done.wait()
        assert errors == []


async def test_closes_over_the_budget_answered_with_each_clients_code() -> None:
    """Three budgets' worth of clients close at once, each with a code of its own: the deferred
    counter grows, each client's close is answered with its code, and each reader's first
    disconnect event carries the code and reason its client sent."""
    before = _deferred()
    async with _echo_server(GatewayWebSocketProtocol) as (port, readers, ends, errors):
        clients = await _clients(port)
        # A message first pairs each client with its reader: readers are listed by adoption.
        await asyncio.gather(*(ws.send(str(i)) for i, ws in enumerate(clients)))
        assert [str(await ws.recv()) for ws in clients] == [str(i) for i in range(CLIENTS)]
        reader_of = {reader.events[0]["text"]: reader for reader in readers}
        await asyncio.gather(
            *(ws.close(code=3000 + i, reason=f"bye {i}") for i, ws in enumerate(clients))
        )
        await ends.done.wait()
        assert _deferred() > before
        for i, ws in enumerate(clients):
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 3000 + i
            disconnect = next(
                e for e in reader_of[str(i)].events if e["type"] == "websocket.disconnect"
            )
            assert disconnect == {
                "type": "websocket.disconnect",
                "code": 3000 + i,
                "reason": f"bye {i}",
            }
        assert errors == []


async def test_hang_ups_over_the_budget_end_on_later_turns() -> None:
    """Three budgets' worth of clients hang up at once without a close frame (their TCP
    connection closed, as a proxy ends the connections of the clients it lost): the deferred
    counter grows, no turn ends more connections than the budget, every reader gets one
    disconnect, that of a lost connection (1005), and the loop reports no exception."""
    before = _deferred()
    async with _echo_server(GatewayWebSocketProtocol) as (port, readers, ends, errors):
        clients = await _clients(port)
        for ws in clients:
            ws.transport.close()
        await ends.done.wait()
        assert _deferred() > before
        assert sum(ends.per_turn) == CLIENTS
        assert max(ends.per_turn) <= INBOUND_BUDGET
        for reader in readers:
            assert reader.events == [{"type": "websocket.disconnect", "code": 1005}]
        assert errors == []


async def test_connection_lost_while_deferred_is_never_parsed() -> None:
    """A connection whose close waits in the backlog and is then lost (aborted here) is not
    parsed afterwards: its reader gets the lost connection's disconnect (1005), not the
    client's code, the loop reports no exception, and every other close is answered with its
    client's code."""
    aborted: list[GatewayWebSocketProtocol] = []

    class AbortDeferred(GatewayWebSocketProtocol):
        """Aborts its transport as soon as one of its chunks is set aside by the budget."""

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.deferred and not self.transport.is_closing():
                aborted.append(self)
                self.transport.abort()

    async with _echo_server(AbortDeferred) as (port, readers, ends, errors):
        clients = await _clients(port)
        await asyncio.gather(*(ws.close(code=3000 + i) for i, ws in enumerate(clients)))
        await ends.done.wait()
        assert aborted, "no close was deferred"
        answered = [ws.protocol.close_rcvd for ws in clients]
        assert len([rcvd for rcvd in answered if rcvd is None]) == len(aborted)
        for i, rcvd in enumerate(answered):
            assert rcvd is None or rcvd.code == 3000 + i
        for reader in readers:
            if reader.sink in aborted:
                assert reader.events == [{"type": "websocket.disconnect", "code": 1005}]
        # The others' first event: their client's close (the lost transport's follows).
        codes = [reader.events[0]["code"] for reader in readers if reader.sink not in aborted]
        assert sorted(codes) == sorted(rcvd.code for rcvd in answered if rcvd is not None)
        assert errors == []
