"""`python -m tests.gateway.stock_gateway`: the gateway on uvicorn's stock WebSocket protocol.

Without `gateway.wsprotocol.GatewayWebSocketProtocol` no `FrameSink` is offered in the ASGI
scope, so every connection takes the fallback send path (`gateway.connection.AsgiConnection`).
"""

from __future__ import annotations

from typing import Any

from gateway.app import create_app
from shared.service import serve


async def _drain(app: Any) -> None:
    await app.state.manager.drain()


if __name__ == "__main__":
    serve("gateway", create_app, lambda settings: settings.gateway_port, drain=_drain)
