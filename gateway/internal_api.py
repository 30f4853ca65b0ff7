"""The gateway's internal API (internal bearer token; never routed publicly): publishing to
clients, and the connection manager's queries across every instance.

`POST /internal/v1/publish` body (JSON):
`{"frame": {"type": ..., ...}, "user_id" | "session_id" | "broadcast": true, "exclude_session"?,
"seq"?}` with exactly one target. Answers 202 `{"receivers": n}`, the number of gateway instances
that received it (0 when nobody holds the target). Delivery is fire-and-forget (pub/sub); producers
that must not lose a frame go through notifications_svc, which stores and replays.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
import redis.asyncio as redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.manager import ConnectionManager
from shared import publish
from shared.errors import Unavailable, ValidationFailed
from shared.http import json_response, read_json, require_internal
from shared.wire import encode


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True):
    frame: dict[str, Any]
    user_id: UUID | None = None
    session_id: UUID | None = None
    broadcast: bool = False
    exclude_session: UUID | None = None
    seq: int | None = None


class Published(msgspec.Struct):
    """How many gateway instances received the frame (0: nobody holds the target)."""

    receivers: int


class ConnectionsSummary(msgspec.Struct):
    connections: int
    active_sessions: list[str]


class SessionConnections(msgspec.Struct):
    session_id: str
    connected: bool
    connections: int


class SessionPath(msgspec.Struct):
    session_id: UUID


async def publish_frame(request: Request) -> Response:
    settings = request.app.state.settings
    require_internal(request, settings.internal_token)
    body = await read_json(request, PublishRequest, settings.http_max_body_bytes)
    targets = (body.user_id is not None) + (body.session_id is not None) + body.broadcast
    if targets != 1:
        raise ValidationFailed("give exactly one of user_id, session_id, broadcast")
    if not isinstance(body.frame.get("type"), str):
        raise ValidationFailed("frame needs a string type")
    if body.seq is not None and body.user_id is None:
        raise ValidationFailed("seq is only meaningful with user_id")
    if body.exclude_session is not None and not body.broadcast:
        raise ValidationFailed("exclude_session is only meaningful with broadcast")
    manager: ConnectionManager = request.app.state.manager
    frame = encode(body.frame)
    try:
        if body.user_id is not None:
            receivers = await publish.to_user(manager.redis, body.user_id, frame, seq=body.seq)
        elif body.session_id is not None:
            receivers = await manager.send_to_session(body.session_id, frame)
        else:
            receivers = await manager.broadcast(frame, exclude_session=body.exclude_session)
    except (redis.RedisError, OSError):
        raise Unavailable("Redis unavailable: frame not published") from None
    return json_response(Published(receivers), 202)


async def connections(request: Request) -> Response:
    """`GET /internal/v1/connections`: live connections and active sessions on every gateway."""
    require_internal(request, request.app.state.settings.internal_token)
    manager: ConnectionManager = request.app.state.manager
    try:
        total = await manager.get_connection_count()
        sessions = await manager.get_active_sessions()
    except (redis.RedisError, OSError):
        raise Unavailable("Redis unavailable") from None
    return json_response(ConnectionsSummary(total, sorted(map(str, sessions))))


async def session_connections(request: Request) -> Response:
    """`GET /internal/v1/sessions/{session_id}/connections`: is it connected, how many times."""
    require_internal(request, request.app.state.settings.internal_token)
    try:
        session_id = UUID(request.path_params["session_id"])
    except ValueError:
        raise ValidationFailed("session_id is not a UUID") from None
    manager: ConnectionManager = request.app.state.manager
    try:
        count = await manager.get_connection_count(session_id)
        connected = await manager.is_session_connected(session_id)
    except (redis.RedisError, OSError):
        raise Unavailable("Redis unavailable") from None
    return json_response(SessionConnections(str(session_id), connected, count))


routes = [
    Route("/internal/v1/publish", publish_frame, methods=["POST"]),
    Route("/internal/v1/connections", connections, methods=["GET"]),
    Route("/internal/v1/sessions/{session_id}/connections", session_connections, methods=["GET"]),
]
