"""The public Web Push REST API (JWT required except for the public key; docs/push.md).

`GET /api/v1/push/vapid-public-key`, `POST`/`GET /api/v1/push/subscriptions`,
`DELETE /api/v1/push/subscriptions/{id}`. Reached through the gateway's facade like the other
`/api/v1/` paths. The caller's id is part of every statement, so another user's subscription
answers 404 exactly like a missing one.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifications_svc import push_store, webpush, wire
from notifications_svc.api import caller
from notifications_svc.webpush import SubscriptionKeys
from shared.errors import NotFound
from shared.http import json_response, read_body
from shared.settings import Settings


class VapidPublicKey(msgspec.Struct):
    public_key: str  # base64url, the browser's `applicationServerKey`


class PushSubscriptionItem(msgspec.Struct):
    """A stored subscription (its keys are the browser's public ones)."""

    id: UUID
    endpoint: str
    keys: SubscriptionKeys
    created_at: str


class PushSubscriptionList(msgspec.Struct):
    items: list[PushSubscriptionItem]


class SubscriptionPath(msgspec.Struct):
    subscription_id: UUID


def _item(row: push_store.StoredSubscription) -> PushSubscriptionItem:
    return PushSubscriptionItem(
        row.id, row.endpoint, SubscriptionKeys(row.p256dh, row.auth), row.created_at.isoformat()
    )


async def vapid_public_key(request: Request) -> Response:
    """`GET /api/v1/push/vapid-public-key` → `{"public_key"}`: the browser's
    `applicationServerKey` (base64url). Public: no token needed."""
    settings: Settings = request.app.state.settings
    return json_response(VapidPublicKey(settings.vapid_public_key))


async def subscribe(request: Request) -> Response:
    """`POST /api/v1/push/subscriptions` with `PushSubscription.toJSON()` → 201 with the stored
    subscription, 200 with the same one when its endpoint was registered before; 422 naming the
    field; 409 over `PUSH_MAX_SUBSCRIPTIONS`."""
    user_id = await caller(request)
    settings: Settings = request.app.state.settings
    raw = await read_body(request, settings.http_max_body_bytes)
    body = webpush.decode_subscription(raw)
    subscription = webpush.parse_subscription(
        body, allow_loopback=settings.push_allow_loopback, hosts=settings.push_endpoint_hosts
    )
    stored, created = await push_store.subscribe(
        request.app.state.pool, user_id, subscription, settings.push_max_subscriptions
    )
    return json_response(_item(stored), 201 if created else 200)


async def list_subscriptions(request: Request) -> Response:
    """`GET /api/v1/push/subscriptions` → `{"items": [...]}`, oldest first."""
    user_id = await caller(request)
    rows = await push_store.list_subscriptions(request.app.state.pool, user_id)
    return json_response(PushSubscriptionList([_item(row) for row in rows]))


async def unsubscribe(request: Request) -> Response:
    """`DELETE /api/v1/push/subscriptions/{id}` → 204; its pending pushes are dropped."""
    user_id = await caller(request)
    subscription_id = wire.parse_uuid(request.path_params["subscription_id"], "id")
    if not await push_store.unsubscribe(request.app.state.pool, user_id, subscription_id):
        raise NotFound("push subscription not found", details={"id": str(subscription_id)})
    return Response(status_code=204)


routes = [
    Route("/api/v1/push/vapid-public-key", vapid_public_key, methods=["GET"]),
    Route("/api/v1/push/subscriptions", subscribe, methods=["POST"]),
    Route("/api/v1/push/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/api/v1/push/subscriptions/{subscription_id}", unsubscribe, methods=["DELETE"]),
]
