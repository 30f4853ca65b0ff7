"""The public REST API, the seed's paths and shapes: a user's own notifications, JWT required.

The gateway proxies these paths unchanged with the client's Authorization header, so the service
verifies the JWT itself. Authentication comes before any other check (a request without a valid
token learns nothing, not even that its id was malformed); the caller's id is then part of every
SQL statement, so another user's notification answers 404 exactly like a missing one.

The same endpoints are also mounted under `/internal/v1/users/{user_id}/notifications...` for our
own services acting for a user (the agent's tools): the internal token instead of the user's JWT,
the user named by the path. They work whatever the JWT algorithm (a service cannot mint an RS256
user token), and the gateway never routes `/internal/` publicly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifications_svc import changes, store, wire
from shared.errors import NotFound
from shared.http import json_response, require_internal, verified_user

Endpoint = Callable[[Request], Awaitable[Response]]


async def caller(request: Request) -> UUID:
    """The user the request speaks for: the one an internal route was called for, else the one
    its bearer JWT names; `Unauthorized` saying why otherwise."""
    on_behalf_of: UUID | None = getattr(request.state, "on_behalf_of", None)
    if on_behalf_of is not None:
        return on_behalf_of
    return await verified_user(request)


def _not_found(notification_id: UUID) -> NotFound:
    return NotFound("notification not found", details={"id": str(notification_id)})


async def list_notifications(request: Request) -> Response:
    """`GET /api/v1/notifications?page&page_size&unread_only&notification_type&cursor`."""
    user_id = await caller(request)
    query = request.query_params
    page = wire.parse_int(query.get("page"), "page", default=1, low=1, high=wire.MAX_PAGE)
    page_size = wire.parse_int(
        query.get("page_size"), "page_size", default=20, low=1, high=wire.MAX_PAGE_SIZE
    )
    filters = store.Filters(
        unread_only=wire.parse_bool(query.get("unread_only"), "unread_only"),
        notification_type=wire.parse_type(query.get("notification_type")),
    )
    cursor = query.get("cursor")
    before_seq = None if cursor is None else wire.decode_cursor(cursor)
    rows, total, has_more = await store.list_page(
        request.app.state.pool,
        user_id,
        filters,
        limit=page_size,
        offset=(page - 1) * page_size,
        before_seq=before_seq,
    )
    body = wire.NotificationPage(
        items=[wire.item(row) for row in rows],
        total=total,
        page=page,
        page_size=page_size,
        has_more=has_more,
        next_cursor=wire.encode_cursor(rows[-1].seq) if has_more else None,
    )
    return json_response(body)


async def mark_read(request: Request) -> Response:
    """`PATCH /api/v1/notifications/{id}/read` → the notification, now read (idempotent)."""
    user_id = await caller(request)
    notification_id = wire.parse_uuid(request.path_params["notification_id"], "id")
    row = await store.mark_read(request.app.state.pool, user_id, notification_id)
    if row is None:
        raise _not_found(notification_id)
    response = json_response(wire.item(row))
    response.background = changes.after_response(request, user_id, "read", [str(notification_id)])
    return response


async def mark_all_read(request: Request) -> Response:
    """`POST /api/v1/notifications/read-all` → how many were marked."""
    user_id = await caller(request)
    count = await store.mark_all_read(request.app.state.pool, user_id)
    response = json_response(wire.MarkedRead(marked_read=count))
    response.background = changes.after_response(request, user_id, "all_read", [])
    return response


async def delete_notification(request: Request) -> Response:
    """`DELETE /api/v1/notifications/{id}` → 204."""
    user_id = await caller(request)
    notification_id = wire.parse_uuid(request.path_params["notification_id"], "id")
    if not await store.delete(request.app.state.pool, user_id, notification_id):
        raise _not_found(notification_id)
    deleted = changes.after_response(request, user_id, "deleted", [str(notification_id)])
    return Response(status_code=204, background=deleted)


async def unread_count(request: Request) -> Response:
    """`GET /api/v1/notifications/unread/count` → `{"unread_count": n}`."""
    user_id = await caller(request)
    count = await store.unread_count(request.app.state.pool, user_id)
    return json_response(wire.UnreadCount(unread_count=count))


routes = [
    Route("/api/v1/notifications", list_notifications, methods=["GET"]),
    Route("/api/v1/notifications/read-all", mark_all_read, methods=["POST"]),
    Route("/api/v1/notifications/unread/count", unread_count, methods=["GET"]),
    Route("/api/v1/notifications/{notification_id}/read", mark_read, methods=["PATCH"]),
    Route("/api/v1/notifications/{notification_id}", delete_notification, methods=["DELETE"]),
]


def _on_behalf(endpoint: Endpoint) -> Endpoint:
    """`endpoint` for our own services: the internal token, the user named by the path."""

    async def internal(request: Request) -> Response:
        require_internal(request, request.app.state.settings.internal_token)
        request.state.on_behalf_of = wire.parse_uuid(request.path_params["user_id"], "user_id")
        return await endpoint(request)

    return internal


_PUBLIC_PREFIX = "/api/v1/notifications"
internal_routes = [
    Route(
        "/internal/v1/users/{user_id}/notifications" + route.path.removeprefix(_PUBLIC_PREFIX),
        _on_behalf(route.endpoint),
        methods=route.methods,
    )
    for route in routes
]
