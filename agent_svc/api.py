"""agent_svc's HTTP routes: the sessions API (public paths, proxied by the gateway's facade) and
the internal session claim the gateway calls.

Public routes verify the client's JWT themselves (the facade forwards the `Authorization`
header) and only ever touch the caller's own sessions: another user's session answers 404,
exactly like a missing one.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_svc import sessions
from shared.errors import Forbidden, NotFound, ValidationFailed
from shared.http import (
    decode_json,
    json_response,
    read_body,
    read_json,
    require_internal,
    verified_user,
)
from shared.wire import ToolCallRecord


class ClaimRequest(msgspec.Struct, forbid_unknown_fields=True):
    session_id: UUID
    user_id: UUID


class CreateSession(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=255)] | None = None


class ClaimResult(msgspec.Struct):
    session_id: UUID
    user_id: UUID
    created: bool


MAX_CLAIMS = 200  # per request: a gateway sends bigger batches as several requests
CLAIMS_BODY_BYTES = 64 * 1024  # 200 claims are about 20 KB: not tied to HTTP_MAX_BODY_BYTES


class ClaimsRequest(msgspec.Struct, forbid_unknown_fields=True):
    claims: Annotated[list[ClaimRequest], msgspec.Meta(min_length=1, max_length=MAX_CLAIMS)]


class ClaimOutcome(msgspec.Struct):
    session_id: UUID
    user_id: UUID
    status: Annotated[
        Literal["created", "owned", "forbidden", "limited"],
        msgspec.Meta(
            description="`created`: the session is new and now the user's; `owned`: it already "
            "was the user's; `forbidden`: another user owns it; `limited`: it is new and over "
            "the user's hourly allowance (`CHAT_MAX_NEW_SESSIONS_PER_HOUR`), nothing claimed"
        ),
    ]
    retry_after: Annotated[
        float | None, msgspec.Meta(description="Seconds until a `limited` claim can succeed")
    ] = None


class ClaimOutcomes(msgspec.Struct):
    """One outcome per claim, in the request's order."""

    outcomes: list[ClaimOutcome]


class Session(msgspec.Struct):
    id: UUID
    title: str | None
    created_at: str
    updated_at: str


class SessionPage(msgspec.Struct):
    """The caller's sessions, most recently updated first."""

    items: list[Session]
    total: int
    page: int
    page_size: int


class SessionMessage(msgspec.Struct):
    """A stored chat message; an assistant message's `id` is its answer's `message_id`."""

    id: UUID
    role: Annotated[str, msgspec.Meta(description="`user` or `assistant`")]
    content: str
    tool_calls: list[ToolCallRecord]
    tokens_used: int
    status: Annotated[
        str, msgspec.Meta(description="`complete`, `cancelled`, `error` or `streaming`")
    ]
    created_at: str


class SessionMessages(msgspec.Struct):
    """The session's history, oldest first."""

    session_id: UUID
    items: list[SessionMessage]


MAX_SESSIONS_PAGE = 1_000_000
MAX_SESSIONS_PAGE_SIZE = 100
MAX_MESSAGES = 500


class SessionsQuery(msgspec.Struct, kw_only=True):
    page: Annotated[int, msgspec.Meta(ge=1, le=MAX_SESSIONS_PAGE)] = 1
    page_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_SESSIONS_PAGE_SIZE)] = 20


class MessagesQuery(msgspec.Struct, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_MESSAGES)] = 100


class SessionPath(msgspec.Struct):
    session_id: UUID


async def claim_session(request: Request) -> Response:
    """`POST /internal/v1/sessions/claim`: 200 when the session is (now) the user's, 403 when
    another user owns it."""
    settings = request.app.state.settings
    require_internal(request, settings.internal_token)
    body = await read_json(request, ClaimRequest, settings.http_max_body_bytes)
    pool = request.app.state.pool
    if await sessions.owner_of(pool, body.session_id) is None:
        # A new session: count it (429 `SESSION_LIMIT` over the user's hourly allowance).
        await request.app.state.new_sessions.count_session(body.user_id)
    owned, created = await sessions.claim(pool, body.session_id, body.user_id)
    if not owned:
        raise Forbidden("session belongs to another user", code="SESSION_FORBIDDEN")
    return json_response(ClaimResult(body.session_id, body.user_id, created))


async def claim_sessions(request: Request) -> Response:
    """`POST /internal/v1/sessions/claims`: `claim_session` for up to `MAX_CLAIMS` claims at once
    (one query, one Redis round trip and one transaction for all), an outcome for each."""
    settings = request.app.state.settings
    require_internal(request, settings.internal_token)
    claims = (await read_json(request, ClaimsRequest, CLAIMS_BODY_BYTES)).claims
    pool = request.app.state.pool
    owners = await sessions.owners_of(pool, {c.session_id for c in claims})
    new = list(
        dict.fromkeys((c.session_id, c.user_id) for c in claims if c.session_id not in owners)
    )
    waits = await request.app.state.new_sessions.count_sessions([user for _, user in new])
    limited = {claim: wait for claim, wait in zip(new, waits, strict=True) if wait is not None}
    allowed = [claim for claim in new if claim not in limited]
    claimed = dict(zip(allowed, await sessions.claim_many(pool, allowed), strict=True))
    outcomes = []
    for c in claims:
        key = (c.session_id, c.user_id)
        outcome = ClaimOutcome(c.session_id, c.user_id, "forbidden")
        if c.session_id in owners:
            if owners[c.session_id] == c.user_id:
                outcome.status = "owned"
        elif key in limited:
            outcome.status, outcome.retry_after = "limited", limited[key]
        else:
            owned, created = claimed[key]
            claimed[key] = (owned, False)  # a repeat of this claim finds the session made
            if owned:
                outcome.status = "created" if created else "owned"
        outcomes.append(outcome)
    return json_response(ClaimOutcomes(outcomes))


async def _caller(request: Request) -> UUID:
    return await verified_user(request)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}")
    return value


def _session(row: asyncpg.Record) -> Session:
    return Session(
        id=row["id"],
        title=row["title"],
        created_at=row["created_at"].isoformat(),
        updated_at=row["updated_at"].isoformat(),
    )


async def create_session(request: Request) -> Response:
    """`POST /api/v1/sessions` (body optional: `{"title"}`) → 201 with the new session."""
    user_id = await _caller(request)
    settings = request.app.state.settings
    # Read whatever arrives (a chunked body has no Content-Length): an empty body is no title.
    raw = await read_body(request, settings.http_max_body_bytes)
    body = decode_json(raw, CreateSession) if raw.strip() else CreateSession()
    if body.title is not None and "\x00" in body.title:
        raise ValidationFailed("title must not contain NUL characters")  # PostgreSQL refuses it
    await request.app.state.new_sessions.count_session(user_id)
    row = await sessions.create(request.app.state.pool, user_id, body.title)
    return json_response(_session(row), 201)


async def list_sessions(request: Request) -> Response:
    """`GET /api/v1/sessions?page&page_size`: the caller's sessions, most recent first."""
    user_id = await _caller(request)
    page = _int_param(request, "page", 1, 1, MAX_SESSIONS_PAGE)
    size = _int_param(request, "page_size", 20, 1, MAX_SESSIONS_PAGE_SIZE)
    rows, total = await sessions.list_mine(request.app.state.pool, user_id, size, (page - 1) * size)
    return json_response(SessionPage([_session(r) for r in rows], total, page, size))


async def session_messages(request: Request) -> Response:
    """`GET /api/v1/sessions/{id}/messages?limit`: the session's history, oldest first."""
    user_id = await _caller(request)
    try:
        session_id = UUID(request.path_params["session_id"])
    except ValueError:
        raise NotFound("no such session", code="SESSION_NOT_FOUND") from None
    limit = _int_param(request, "limit", 100, 1, MAX_MESSAGES)
    rows = await sessions.messages_of(request.app.state.pool, session_id, user_id, limit)
    if rows is None:
        raise NotFound("no such session", code="SESSION_NOT_FOUND")
    items = [
        SessionMessage(
            id=r["id"],
            role=r["role"],
            content=r["content"],
            tool_calls=msgspec.convert(r["tool_calls"], list[ToolCallRecord]),
            tokens_used=r["tokens_used"],
            status=r["status"],
            created_at=r["created_at"].isoformat(),
        )
        for r in rows
    ]
    return json_response(SessionMessages(session_id, items))


routes = [
    Route("/internal/v1/sessions/claim", claim_session, methods=["POST"]),
    Route("/internal/v1/sessions/claims", claim_sessions, methods=["POST"]),
    Route("/api/v1/sessions", create_session, methods=["POST"]),
    Route("/api/v1/sessions", list_sessions, methods=["GET"]),
    Route("/api/v1/sessions/{session_id}/messages", session_messages, methods=["GET"]),
]
