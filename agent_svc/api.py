"""agent_svc's HTTP routes: internal endpoints the gateway calls."""

from __future__ import annotations

from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_svc import sessions
from shared.errors import Forbidden
from shared.http import json_response, read_json, require_internal


class ClaimRequest(msgspec.Struct, forbid_unknown_fields=True):
    session_id: UUID
    user_id: UUID


async def claim_session(request: Request) -> Response:
    """`POST /internal/v1/sessions/claim`: 200 when the session is (now) the user's, 403 when
    another user owns it."""
    settings = request.app.state.settings
    require_internal(request, settings.internal_token)
    body = await read_json(request, ClaimRequest, settings.http_max_body_bytes)
    owned, created = await sessions.claim(request.app.state.pool, body.session_id, body.user_id)
    if not owned:
        raise Forbidden("session belongs to another user", code="SESSION_FORBIDDEN")
    return json_response(
        {"session_id": body.session_id, "user_id": body.user_id, "created": created}
    )


routes = [Route("/internal/v1/sessions/claim", claim_session, methods=["POST"])]
