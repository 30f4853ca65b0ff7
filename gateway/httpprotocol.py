"""The HTTP side of the gateway's connections: uvicorn's httptools protocol, which lets go of
itself once it has handed a connection over to the WebSocket protocol.

Every WebSocket starts as an HTTP request. uvicorn's `HttpToolsProtocol` parses it, hands the
transport to the WebSocket protocol and is dropped by the transport, but its `httptools` parser
keeps six bound methods of it: a reference cycle (the protocol, its parser, their methods, its
flow control and event, about 21 objects) that only the garbage collector frees. One per
connect: while clients connect, that was the cyclic garbage every young collection found (180
cycles, 3,700 objects each). `GatewayHttpProtocol` drops the parser once the upgrade is done,
so reference counting frees the rest at once, as uvicorn itself does when a plain HTTP
connection ends.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatewayHttpProtocol(HttpToolsProtocol):
    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        self.parser = None  # type: ignore[assignment]
