"""`python -m gateway`: run a gateway instance."""

from typing import Any

from gateway.app import create_app
from gateway.httpprotocol import GatewayHttpProtocol
from gateway.wsprotocol import GatewayWebSocketProtocol
from shared.service import serve


async def _drain(app: Any) -> None:
    await app.state.manager.drain()


serve(
    "gateway",
    create_app,
    lambda settings: settings.gateway_port,
    drain=_drain,
    ws_protocol=GatewayWebSocketProtocol,
    http_protocol=GatewayHttpProtocol,
)
