"""Internal API endpoints (Bearer `INTERNAL_TOKEN`): create, batch create, replay (one user's or
many users' at once) for the gateway.

Never routed by the gateway's public facade. Contracts in docs/internal-api.md and
docs/notifications.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated
from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notifications_svc import store, wire
from notifications_svc.outbox import Outbox
from shared.errors import ValidationFailed
from shared.http import json_response, read_json, require_internal
from shared.settings import Settings
from shared.wire import Notification as NotificationFrame

MAX_BATCH = 500
REPLAY_DEFAULT_LIMIT = 500
REPLAY_MAX_LIMIT = 1000
REPLAY_MAX_ASKS = 500  # about 35 KB of asks: within the default HTTP_MAX_BODY_BYTES
# The most rows one batch replay may ask for (the sum of its limits): bounds the answer's size.
REPLAY_MAX_ROWS = 20_000
# Past this many bytes of frames a batch replay's pages keep their first item only (`fit`): a
# few users with large notifications cannot make the answer too large for the gateway to read
# (16 MiB), whatever the row count.
REPLAY_MAX_BYTES = 2 * 1024 * 1024


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    notifications: Annotated[
        list[wire.CreateNotification], msgspec.Meta(min_length=1, max_length=MAX_BATCH)
    ]


class BatchItem(msgspec.Struct):
    created: bool
    notification: wire.NotificationItem


class BatchResult(msgspec.Struct):
    """The batch's items in request order; `created` is false for a dedupe hit."""

    items: list[BatchItem]


class ReplayPage(msgspec.Struct):
    """The user's pushed notifications after `after_seq`, ascending, as WebSocket frames."""

    items: list[NotificationFrame]
    has_more: bool
    last_seq: int


class ReplayQuery(msgspec.Struct, kw_only=True):
    after_seq: Annotated[int, msgspec.Meta(ge=0, le=wire.MAX_SEQ)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=REPLAY_MAX_LIMIT)] = REPLAY_DEFAULT_LIMIT


class ReplayAsk(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One user's page in a batch replay: as the single-user replay's query."""

    user_id: UUID
    after_seq: Annotated[int, msgspec.Meta(ge=0, le=wire.MAX_SEQ)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=REPLAY_MAX_LIMIT)] = REPLAY_DEFAULT_LIMIT


class ReplayBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Up to `REPLAY_MAX_ASKS` asks whose limits add up to at most `REPLAY_MAX_ROWS`."""

    asks: Annotated[list[ReplayAsk], msgspec.Meta(min_length=1, max_length=REPLAY_MAX_ASKS)]


class ReplayPages(msgspec.Struct):
    """One page per ask, in ask order, all read in one snapshot."""

    pages: list[ReplayPage]


class _EncodedPage(msgspec.Struct):
    """A `ReplayPage` whose items are already encoded (`fit`)."""

    items: list[msgspec.Raw]
    has_more: bool
    last_seq: int


class _EncodedPages(msgspec.Struct):
    pages: list[_EncodedPage]


def fit(pages: Sequence[store.ReplayPage], budget: int) -> list[_EncodedPage]:
    """The pages' items as frame JSON, each page's in order, while they add up to less than
    `budget` bytes; past it a page keeps only its first item (then `has_more` is true). Every
    page with items still moves its reader forward, and the answer stays bounded."""
    fitted: list[_EncodedPage] = []
    used = 0
    for page in pages:
        items: list[msgspec.Raw] = []
        for row in page.rows:
            if items and used >= budget:
                break
            frame = wire.frame_bytes(row)
            used += len(frame)
            items.append(msgspec.Raw(frame))
        has_more = page.has_more or len(items) < len(page.rows)
        fitted.append(_EncodedPage(items, has_more, page.last_seq))
    return fitted


class UserPath(msgspec.Struct):
    user_id: UUID


class IdempotencyHeaders(msgspec.Struct, kw_only=True):
    """Headers of `POST /internal/v1/notifications`: a retry with the same key answers the
    notification it created the first time (200) instead of creating another."""

    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = (
        msgspec.field(default=None, name="Idempotency-Key")
    )


def _authorised(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    require_internal(request, settings.internal_token)
    return settings


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 characters", details={"field": "Idempotency-Key"}
        )
    return key


async def create(request: Request) -> Response:
    """`POST /internal/v1/notifications` → 201 with the notification; 200 with the same one when
    its `Idempotency-Key`/`dedupe_key` was seen before. Redis being down never fails it."""
    settings = _authorised(request)
    key = _idempotency_key(request)
    body = await read_json(request, wire.CreateNotification, settings.http_max_body_bytes)
    result = await store.create(
        request.app.state.pool, body, idempotency_key=key, planner=request.app.state.planner
    )
    if result.created and body.send_push:
        outbox: Outbox = request.app.state.outbox
        await outbox.after_commit(body.user_id)
    return json_response(wire.item(result.row), 201 if result.created else 200)


async def create_batch(request: Request) -> Response:
    """`POST /internal/v1/notifications/batch` `{"notifications": [...]}`: all or none, in one
    transaction → `{"items": [{"created", "notification"}, ...]}` in request order; 201 when at
    least one was created, 200 when every item was a dedupe hit. The relay publishes them."""
    settings = _authorised(request)
    if "idempotency-key" in request.headers:
        # Refused rather than ignored: a retry relying on it would silently create duplicates.
        raise ValidationFailed(
            "batch creates are idempotent per item: give each a dedupe_key instead of an "
            "Idempotency-Key header",
            details={"field": "Idempotency-Key"},
        )
    body = await read_json(request, BatchRequest, settings.http_max_body_bytes)
    results = await store.create_many(
        request.app.state.pool, body.notifications, planner=request.app.state.planner
    )
    if any(r.created for r in results):
        outbox: Outbox = request.app.state.outbox
        outbox.wake()
    items = [BatchItem(created=r.created, notification=wire.item(r.row)) for r in results]
    return json_response(BatchResult(items), 201 if any(r.created for r in results) else 200)


async def replay(request: Request) -> Response:
    """`GET /internal/v1/users/{user_id}/notifications/replay?after_seq=N&limit=L` → the user's
    pushed notifications with seq > N as frames, ascending, with `has_more` and `last_seq`."""
    _authorised(request)
    user_id = wire.parse_uuid(request.path_params["user_id"], "user_id")
    query = request.query_params
    after_seq = wire.parse_int(
        query.get("after_seq"), "after_seq", default=0, low=0, high=wire.MAX_SEQ
    )
    limit = wire.parse_int(
        query.get("limit"), "limit", default=REPLAY_DEFAULT_LIMIT, low=1, high=REPLAY_MAX_LIMIT
    )
    rows, has_more, last_seq = await store.replay(request.app.state.pool, user_id, after_seq, limit)
    return json_response(ReplayPage([wire.frame(row) for row in rows], has_more, last_seq))


async def replay_many(request: Request) -> Response:
    """`POST /internal/v1/notifications/replay` `{"asks": [{"user_id", "after_seq", "limit"}]}`
    → `{"pages": [...]}` (`ReplayPages`): per ask, in order, what the single-user replay answers
    for it, shortened past `REPLAY_MAX_BYTES` of frames (`fit`)."""
    settings = _authorised(request)
    body = await read_json(request, ReplayBatch, settings.http_max_body_bytes)
    if sum(ask.limit for ask in body.asks) > REPLAY_MAX_ROWS:
        raise ValidationFailed(
            f"the asks' limits add up to more than {REPLAY_MAX_ROWS}", details={"field": "asks"}
        )
    asks = [store.ReplayAsk(a.user_id, a.after_seq, a.limit) for a in body.asks]
    pages = await store.replay_many(request.app.state.pool, asks)
    return json_response(_EncodedPages(fit(pages, REPLAY_MAX_BYTES)))


routes = [
    Route("/internal/v1/notifications", create, methods=["POST"]),
    Route("/internal/v1/notifications/batch", create_batch, methods=["POST"]),
    Route("/internal/v1/notifications/replay", replay_many, methods=["POST"]),
    Route("/internal/v1/users/{user_id}/notifications/replay", replay, methods=["GET"]),
]
