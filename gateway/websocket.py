"""`WS /api/v1/ws/{session_id}`: the handshake, then the connection's life.

A refused connection is accepted first and then closed, so a browser sees the close code and
reason (closing before accept becomes a bare HTTP 403). Checks, cheapest first: instance capacity,
`last_seq` syntax, Origin, token, session id, session ownership (agent_svc, durable), the
per-session cap (Redis, atomic across instances). See docs/protocol.md.

Once the connection is set up, the gateway's own protocol (`gateway.wsprotocol`) takes it over
(`RawConnection.own()`, unless WS_OWNED_PROTOCOL is off) and this endpoint returns: an idle
connection holds no task, no ASGI scope and no Starlette `WebSocket`. Under another protocol the
endpoint reads the connection until it ends (`Connection.run`), the ASGI fallback.

Before that, what only the handshake needed (request headers, the query string
and offered subprotocols — the token among them —, the endpoint's own copies) is dropped rather
than kept for the connection's life (docs/performance-notes.md, "Memory per idle connection").
"""

from __future__ import annotations

import logging
from uuid import UUID

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gateway import metrics
from gateway.connection import Connection, RawConnection, open_connection
from gateway.handshake import credentials, origin_allowed
from gateway.manager import ConnectionManager
from shared.auth import Identity, TokenError, TokenVerifier
from shared.errors import Refused

log = logging.getLogger(__name__)


async def websocket_endpoint(websocket: WebSocket) -> None:
    manager: ConnectionManager = websocket.app.state.manager
    verifier: TokenVerifier = websocket.app.state.verifier
    scope = websocket.scope
    metrics.HANDSHAKES.inc()
    try:
        creds = credentials(
            scope.get("query_string", b""),
            websocket.headers.get("authorization"),
            scope.get("subprotocols") or [],
        )
    except Refused as exc:
        await websocket.accept()
        await _refuse(websocket, exc.close_code, exc.reason)
        return
    await websocket.accept(subprotocol=creds.subprotocol)
    try:
        manager.reserve()
    except Refused as exc:
        await _refuse(websocket, exc.close_code, exc.reason)
        return
    conn: Connection | None = None
    adopted = False
    try:
        origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
        if not origin_allowed(origin, manager.settings.cors_origins, host):
            raise Refused(1008, "origin not allowed")
        identity = await _verify(verifier, creds.token)
        try:
            session_id = UUID(websocket.path_params["session_id"])
        except ValueError:
            raise Refused(1008, "session id is not a UUID") from None
        await manager.claim(session_id, identity.user_id)
        conn = open_connection(
            manager,
            websocket,
            manager.new_connection_id(),
            identity.user_id,
            session_id,
            identity.expires_at,
        )
        await manager.connect(conn, creds.last_seq)
        del creds, identity, origin, host
        _forget_handshake(websocket)
        if isinstance(conn, RawConnection) and manager.settings.ws_owned_protocol:
            # The protocol serves the connection from here; this task (and with it the ASGI
            # objects above it) ends now. The connection ends itself after its disconnect.
            conn.own()
            adopted = True
            return
        await conn.run(verifier)
    except Refused as exc:
        if conn is not None:
            await conn.close(exc.close_code, exc.reason)
        else:
            await _refuse(websocket, exc.close_code, exc.reason)
    except Exception:
        log.exception("connection failed")
        if conn is not None:
            await conn.close(1011, "internal error")
        else:
            await _refuse(websocket, 1011, "internal error")
    finally:
        if not adopted:
            if conn is not None:
                await manager.disconnect(conn)
            manager.release_slot()


def _forget_handshake(websocket: WebSocket) -> None:
    """Drop the request's headers, query string and subprotocols: nothing reads them after the
    handshake, and they (a JWT among them) would otherwise live as long as the connection."""
    scope = websocket.scope
    scope["headers"], scope["query_string"], scope["subprotocols"] = [], b"", []
    # Starlette's cached views of them, if the handshake built any.
    for cached in ("_headers", "_query_params"):
        websocket.__dict__.pop(cached, None)


async def _verify(verifier: TokenVerifier, token: str | None) -> Identity:
    try:
        return await verifier.verify(token)
    except TokenError as exc:
        raise Refused(1008, exc.reason) from None


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    metrics.CLOSES.labels(str(code), reason.partition(":")[0]).inc()
    try:
        await websocket.close(code, reason)
    except (OSError, RuntimeError):
        log.debug("client left before the close frame")


route = WebSocketRoute("/api/v1/ws/{session_id}", websocket_endpoint)
routes = [route]
