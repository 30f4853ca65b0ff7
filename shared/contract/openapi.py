"""OpenAPI 3.1 documents: the public API the gateway serves, and the internal API of all three
services (`/internal/...`, bearer `INTERNAL_TOKEN`, never served publicly).

The route tables below say which msgspec type is each route's body, query, path parameters,
headers and answer per status, and which stable error codes each error status carries. The
types are the ones the handlers decode and encode; schemas are generated from them
(`shared.contract.schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from agent_svc import api as agent_api
from gateway import chat, internal_api
from notifications_svc import internal_api as notifications_internal
from notifications_svc import push_api, webpush
from notifications_svc import wire as notifications
from shared import chat_wire, topic_wire
from shared.contract.schemas import Schemas, fields
from shared.http import Alive, Ready
from shared.wire import ErrorResponse

VERSION = "1.0.0"
JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True)
class Answer:
    """One documented status of a route: its body type (None: no body) and, for errors, the
    stable `error.code` values it carries."""

    status: int
    description: str
    body: Any = None
    media: str = JSON
    codes: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    answers: tuple[Answer, ...]
    description: str = ""
    body: Any = None
    body_required: bool = True
    query: type[msgspec.Struct] | None = None
    path_params: type[msgspec.Struct] | None = None
    headers: type[msgspec.Struct] | None = None
    security: str | None = "bearer"  # a key of the document's securitySchemes, None: public
    server: str | None = None  # internal document: which service serves it


# Errors most routes share.
E401 = Answer(401, "No valid token (missing, malformed, expired, wrong signature).", ErrorResponse,
              codes=("UNAUTHORIZED",))  # fmt: skip
E422 = Answer(422, "A parameter or body field is invalid; `details` names it.", ErrorResponse,
              codes=("VALIDATION_ERROR",))  # fmt: skip
E400 = Answer(400, "The body is not JSON (or nested too deeply to parse).", ErrorResponse,
              codes=("INVALID_JSON",))  # fmt: skip
E413 = Answer(413, "The body is over `HTTP_MAX_BODY_BYTES`.", ErrorResponse,
              codes=("PAYLOAD_TOO_LARGE",))  # fmt: skip
E503_UPSTREAM = Answer(503, "The owning service did not answer in time or is unreachable.",
                       ErrorResponse, codes=("SERVICE_UNAVAILABLE",))  # fmt: skip
E413_FACADE = Answer(413, "The body is over `HTTP_MAX_BODY_BYTES` (the facade reads any request's "
                     "body before forwarding it).", ErrorResponse,
                     codes=("PAYLOAD_TOO_LARGE",))  # fmt: skip
E503_DATABASE = Answer(503, "PostgreSQL is unreachable: retry later.", ErrorResponse,
                       codes=("SERVICE_UNAVAILABLE",))  # fmt: skip
E404_NOTIFICATION = Answer(404, "No such notification of the caller's (another user's id answers"
                           " exactly like a missing one).", ErrorResponse,
                           codes=("NOT_FOUND",))  # fmt: skip
E404_SESSION = Answer(404, "No such session of the caller's.", ErrorResponse,
                      codes=("SESSION_NOT_FOUND",))  # fmt: skip
E404_ANSWER = Answer(404, "No such answer of the caller's (or it expired).", ErrorResponse,
                     codes=("ANSWER_NOT_FOUND",))  # fmt: skip

RETRY_AFTER = {"Retry-After": "Seconds to wait before trying again (also `details.retry_after`)."}
E429 = Answer(429, "Over the caller's request rate through the gateways (`HTTP_USER_RATE_LIMIT`, "
              "bursts of `HTTP_USER_RATE_BURST`).", ErrorResponse, codes=("RATE_LIMITED",),
              headers=RETRY_AFTER)  # fmt: skip
E429_NEW_SESSION = Answer(429, "Over the caller's request rate, or over the chat sessions a "
                          "user may create per hour (`CHAT_MAX_NEW_SESSIONS_PER_HOUR`).",
                          ErrorResponse,
                          codes=("RATE_LIMITED", "SESSION_LIMIT"), headers=RETRY_AFTER)  # fmt: skip
E429_CHAT = Answer(429, "Over the caller's request rate, the sessions a user may create per hour "
                   "(a question without `session_id` creates one), the questions a user may have "
                   "waiting (`CHAT_MAX_QUEUED_PER_USER`) or today's model-token budget "
                   "(`CHAT_DAILY_TOKEN_BUDGET`).", ErrorResponse,
                   codes=("RATE_LIMITED", "SESSION_LIMIT", "CHAT_QUEUE_FULL",
                          "TOKEN_BUDGET_EXHAUSTED"), headers=RETRY_AFTER)  # fmt: skip

E403_TOPIC = Answer(403, "The namespace does not let the caller subscribe (`details.topic`).",
                    ErrorResponse, codes=("SUBSCRIBE_FORBIDDEN", "TOPIC_TOKEN_REQUIRED",
                                          "TOPIC_TOKEN_INVALID",
                                          "TOPIC_TOKEN_EXPIRED"))  # fmt: skip
E404_TOPIC = Answer(404, "No such namespace, or it keeps no presence.", ErrorResponse,
                    codes=("TOPIC_UNKNOWN_NAMESPACE", "PRESENCE_DISABLED"))  # fmt: skip
E422_TOPIC = Answer(422, "Not a valid topic name (`namespace:name`, docs/topics.md).",
                    ErrorResponse, codes=("TOPIC_INVALID", "VALIDATION_ERROR"))  # fmt: skip
E503_REDIS = Answer(503, "Redis is down.", ErrorResponse,
                    codes=("SERVICE_UNAVAILABLE",))  # fmt: skip

SSE_HEADERS = {
    "Cache-Control": "`no-cache`",
    "X-Accel-Buffering": "`no` (proxies must not buffer the stream)",
}

_NOTIFICATION_ROUTES = (
    Route("GET", "/api/v1/notifications", "listNotifications", "The caller's notifications, "
          "newest first", "notifications", query=notifications.ListQuery,
          answers=(Answer(200, "One page.", notifications.NotificationPage), E401, E422)),
    Route("POST", "/api/v1/notifications/read-all", "markAllNotificationsRead",
          "Mark every notification of the caller's read", "notifications",
          answers=(Answer(200, "How many were marked.", notifications.MarkedRead), E401)),
    Route("GET", "/api/v1/notifications/unread/count", "countUnreadNotifications",
          "How many of the caller's notifications are unread", "notifications",
          answers=(Answer(200, "The count.", notifications.UnreadCount), E401)),
    Route("PATCH", "/api/v1/notifications/{notification_id}/read", "markNotificationRead",
          "Mark one notification read (idempotent)", "notifications",
          path_params=notifications.NotificationPath,
          answers=(Answer(200, "The notification, now read.", notifications.NotificationItem),
                   E401, E404_NOTIFICATION, E422)),
    Route("DELETE", "/api/v1/notifications/{notification_id}", "deleteNotification",
          "Delete one notification", "notifications", path_params=notifications.NotificationPath,
          answers=(Answer(204, "Deleted."), E401, E404_NOTIFICATION, E422)),
)  # fmt: skip

E404_SUBSCRIPTION = Answer(404, "No such push subscription of the caller's (another user's id "
                           "answers exactly like a missing one).", ErrorResponse,
                           codes=("NOT_FOUND",))  # fmt: skip

# Web Push (docs/push.md): served by notifications_svc, reached through the facade.
_PUSH_ROUTES = (
    Route("GET", "/api/v1/push/vapid-public-key", "getVapidPublicKey",
          "The VAPID public key to subscribe with (the browser's `applicationServerKey`)", "push",
          security=None, answers=(Answer(200, "The key, base64url.", push_api.VapidPublicKey),)),
    Route("POST", "/api/v1/push/subscriptions", "registerPushSubscription",
          "Register a browser's push subscription (`PushSubscription.toJSON()`)", "push",
          description="Idempotent per endpoint. The endpoint must be https on a host of "
          "`PUSH_ENDPOINT_HOSTS`; `keys.p256dh` a P-256 point, `keys.auth` 16 bytes (base64url). "
          "An endpoint registered by another user moves to the caller under a new id.",
          body=webpush.SubscriptionBody,
          answers=(Answer(201, "Registered.", push_api.PushSubscriptionItem),
                   Answer(200, "The endpoint was registered before: the same subscription.",
                          push_api.PushSubscriptionItem),
                   E400, E401,
                   Answer(409, "The caller has `PUSH_MAX_SUBSCRIPTIONS` subscriptions already.",
                          ErrorResponse, codes=("CONFLICT",)),
                   E422)),
    Route("GET", "/api/v1/push/subscriptions", "listPushSubscriptions",
          "The caller's push subscriptions, oldest first", "push",
          answers=(Answer(200, "The subscriptions.", push_api.PushSubscriptionList), E401)),
    Route("DELETE", "/api/v1/push/subscriptions/{subscription_id}", "deletePushSubscription",
          "Delete one push subscription (and its pending pushes)", "push",
          path_params=push_api.SubscriptionPath,
          answers=(Answer(204, "Deleted."), E401, E404_SUBSCRIPTION, E422)),
)  # fmt: skip

_GATEWAY_ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", "The process is alive", "health", security=None,
          answers=(Answer(200, "Alive.", Alive),)),
    Route("GET", "/readyz", "readyz", "Dependencies (Redis) are reachable", "health",
          security=None, answers=(Answer(200, "Ready.", Ready),
                                  Answer(503, "A dependency is down (`error` names it).", Ready,
                                         codes=("DEPENDENCY_DOWN",)))),
    *(Route(r.method, r.path, r.operation_id, r.summary, r.tag,
            (*r.answers, E413_FACADE, E429, E503_UPSTREAM), query=r.query,
            path_params=r.path_params)
      for r in _NOTIFICATION_ROUTES),
    *(Route(r.method, r.path, r.operation_id, r.summary, r.tag,
            (*r.answers, E413_FACADE, E429, E503_UPSTREAM), description=r.description,
            body=r.body, path_params=r.path_params, security=r.security)
      for r in _PUSH_ROUTES),
    Route("POST", "/api/v1/sessions", "createSession", "Create a chat session", "sessions",
          body=agent_api.CreateSession, body_required=False,
          answers=(Answer(201, "The new session.", agent_api.Session), E400, E401, E413_FACADE,
                   E422, E429_NEW_SESSION, E503_UPSTREAM)),
    Route("GET", "/api/v1/sessions", "listSessions", "The caller's chat sessions, most recent "
          "first", "sessions", query=agent_api.SessionsQuery,
          answers=(Answer(200, "One page.", agent_api.SessionPage), E401, E413_FACADE, E422,
                   E429, E503_UPSTREAM)),
    Route("GET", "/api/v1/sessions/{session_id}/messages", "listSessionMessages",
          "A session's history, oldest first", "sessions", path_params=agent_api.SessionPath,
          query=agent_api.MessagesQuery,
          answers=(Answer(200, "The messages.", agent_api.SessionMessages), E401, E404_SESSION,
                   E413_FACADE, E422, E429, E503_UPSTREAM)),
    Route("POST", "/api/v1/chat/stream", "chatStream", "Ask, and stream the answer (SSE)", "chat",
          description="Each event is one `data: {json}` line and a blank line (no `id:` lines; "
          "the JSON carries `event_id`). Without `session_id` a new session is created. "
          "`: keep-alive` comments are sent after `SSE_KEEPALIVE_INTERVAL` s of silence.",
          body=chat.ChatBody,
          answers=(Answer(200, "The answer's events, `start` first, `end` or `error` last.",
                          chat_wire.ChatEvent, SSE, headers=SSE_HEADERS),
                   E400, E401,
                   Answer(404, "`session_id` is another user's.", ErrorResponse,
                          codes=("SESSION_NOT_FOUND",)),
                   Answer(409, "An answer is already streaming in this session; `details."
                          "message_id` names it (resume or cancel it).", ErrorResponse,
                          codes=("CHAT_BUSY",)),
                   E413, E422, E429_CHAT,
                   Answer(503, "No agent worker is running, or agent_svc cannot confirm the "
                          "session.", ErrorResponse,
                          codes=("CHAT_UNAVAILABLE", "SERVICE_UNAVAILABLE")))),
    Route("GET", "/api/v1/openapi.json", "openapiDocument", "This document", "docs",
          security=None, answers=(Answer(200, "OpenAPI 3.1.", dict[str, Any]),)),
    Route("GET", "/api/v1/asyncapi.json", "asyncapiDocument",
          "The WebSocket protocol (AsyncAPI 3.0)", "docs", security=None,
          answers=(Answer(200, "AsyncAPI 3.0.", dict[str, Any]),)),
    Route("GET", "/docs", "docsPage", "This documentation as a web page", "docs",
          security=None, answers=(Answer(200, "HTML; assets under `/docs/assets/`.", str,
                                         "text/html"),)),
    Route("GET", "/console", "consolePage", "The browser console: inbox, chat, connection", "docs",
          description="Sign in with `#token=<JWT>` in the URL fragment (never sent to a server) "
          "or by pasting a token. Strict CSP; its modules are under `/console/app/` and the client "
          "library under `/console/src/`.",
          security=None, answers=(Answer(200, "HTML.", str, "text/html"),)),
    Route("GET", "/api/v1/chat/stream/{message_id}", "resumeChatStream",
          "Resume an answer after `Last-Event-ID` (standard SSE, for EventSource)", "chat",
          description="Events carry `id:` lines. The token may come as `?token=` since "
          "EventSource cannot send headers.",
          path_params=chat.MessageIdPath, query=chat.ResumeQuery, headers=chat.ResumeHeaders,
          answers=(Answer(200, "The events after the given id.", chat_wire.ChatEvent, SSE,
                          headers=SSE_HEADERS),
                   Answer(204, "The answer is over and nothing is left after that id "
                          "(EventSource stops reconnecting)."),
                   E401, E404_ANSWER, E422, E429)),
    Route("GET", "/api/v1/topics/{topic}/presence", "topicPresence",
          "Who is subscribed to a topic (docs/topics.md)", "topics",
          description="Same authorization as subscribing; a token namespace needs the "
          "subscription token in `X-Topic-Token`. At most `TOPIC_MAX_PRESENCE` clients are "
          "listed (`truncated` says when more exist; `total` and `users` count all).",
          path_params=topic_wire.TopicPath, headers=topic_wire.PresenceHeaders,
          answers=(Answer(200, "The topic's live connections.", topic_wire.PresenceAnswer),
                   E401, E403_TOPIC, E404_TOPIC, E422_TOPIC, E429, E503_REDIS)),
    Route("POST", "/api/v1/chat/stream/{message_id}/cancel", "cancelChatStream",
          "Stop an answer (it ends with `end`, status `cancelled`; idempotent)", "chat",
          path_params=chat.MessageIdPath,
          answers=(Answer(202, "Cancelling.", chat.CancelAccepted), E401, E404_ANSWER, E429)),
)  # fmt: skip

# deploy/nginx.conf limits requests per client address (limit_req) on every route: its refusal is
# the API's JSON 429 with Retry-After, so a client behind the shipped edge may meet it anywhere.
E429_EDGE = Answer(429, "Refused at the edge: over the request rate per client address of "
                   "`deploy/nginx.conf` (or the Ingress).", ErrorResponse, codes=("RATE_LIMITED",),
                   headers=RETRY_AFTER)  # fmt: skip


def _behind_the_edge(route: Route) -> Route:
    """`route` with the edge's 429 documented, unless the gateway already answers one."""
    if any(answer.status == 429 for answer in route.answers):
        return route
    return replace(route, answers=(*route.answers, E429_EDGE))


PUBLIC_ROUTES: tuple[Route, ...] = tuple(_behind_the_edge(route) for route in _GATEWAY_ROUTES)

_ON_BEHALF = tuple(
    Route(r.method, "/internal/v1/users/{user_id}" + r.path.removeprefix("/api/v1"),
          r.operation_id + "ForUser", r.summary + " (for a user)", "notifications",
          (*r.answers, E503_DATABASE), query=r.query, path_params=r.path_params,
          security="internal", server="notifications",
          description="The public route's handler, with the internal token instead of the "
          "user's JWT and the user named by the path.")
    for r in _NOTIFICATION_ROUTES
)  # fmt: skip

INTERNAL_ROUTES: tuple[Route, ...] = (
    Route("POST", "/internal/v1/notifications", "createNotification",
          "Create a notification (stored, then pushed)", "notifications",
          body=notifications.CreateNotification,
          headers=notifications_internal.IdempotencyHeaders, security="internal",
          server="notifications",
          answers=(Answer(201, "Created.", notifications.NotificationItem),
                   Answer(200, "Seen before (same `Idempotency-Key` or `dedupe_key`): the "
                          "notification it created.", notifications.NotificationItem),
                   E400, E401, E413, E422, E503_DATABASE)),
    Route("POST", "/internal/v1/notifications/batch", "createNotifications",
          "Create many notifications in one transaction", "notifications",
          body=notifications_internal.BatchRequest, security="internal", server="notifications",
          answers=(Answer(201, "At least one was created.", notifications_internal.BatchResult),
                   Answer(200, "Every item was a dedupe hit.", notifications_internal.BatchResult),
                   E400, E401, E413, E422, E503_DATABASE)),
    Route("GET", "/internal/v1/users/{user_id}/notifications/replay", "replayNotifications",
          "A user's pushed notifications after a seq, as frames (the gateway's resume)",
          "notifications", path_params=notifications_internal.UserPath,
          query=notifications_internal.ReplayQuery, security="internal", server="notifications",
          answers=(Answer(200, "Ascending by seq.", notifications_internal.ReplayPage), E401,
                   E422, E503_DATABASE)),
    Route("POST", "/internal/v1/notifications/replay", "replayNotificationsOfMany",
          "Many users' pushed notifications after a seq each, in one call (the gateway's "
          "resumes and seq baselines, batched)", "notifications",
          body=notifications_internal.ReplayBatch, security="internal", server="notifications",
          description="One page per ask, in ask order, each what the single-user replay "
          "answers for it (past 2 MiB of frames, later pages keep their first item only, with "
          "`has_more`); every page is read in one snapshot. At most 500 asks, whose limits "
          "add up to at most 20,000 (else 422).",
          answers=(Answer(200, "One page per ask, in ask order.",
                          notifications_internal.ReplayPages),
                   E400, E401, E413, E422, E503_DATABASE)),
    *_ON_BEHALF,
    Route("POST", "/internal/v1/sessions/claim", "claimSession",
          "Make a session the user's (first use claims it)", "sessions",
          body=agent_api.ClaimRequest, security="internal", server="agent",
          answers=(Answer(200, "The session is (now) the user's.", agent_api.ClaimResult),
                   E400, E401,
                   Answer(403, "Another user owns the session.", ErrorResponse,
                          codes=("SESSION_FORBIDDEN",)), E413, E422,
                   Answer(429, "A new session over the user's hourly allowance "
                          "(`CHAT_MAX_NEW_SESSIONS_PER_HOUR`).", ErrorResponse,
                          codes=("SESSION_LIMIT",), headers=RETRY_AFTER))),
    Route("POST", "/internal/v1/sessions/claims", "claimSessions",
          "Claim up to 200 sessions at once, an outcome for each", "sessions",
          body=agent_api.ClaimsRequest, security="internal", server="agent",
          answers=(Answer(200, "One outcome per claim, in order (a refused claim is an outcome, "
                              "not an error).", agent_api.ClaimOutcomes),
                   E400, E401, E413, E422)),
    Route("POST", "/internal/v1/publish", "publishFrame",
          "Publish a frame to a user, a session or everyone (fire-and-forget)", "gateway",
          body=internal_api.PublishRequest, security="internal", server="gateway",
          answers=(Answer(202, "Published.", internal_api.Published), E400, E401, E413, E422,
                   Answer(503, "Redis is down: not published.", ErrorResponse,
                          codes=("SERVICE_UNAVAILABLE",)))),
    Route("POST", "/internal/v1/topics/{topic}/publications", "publishToTopic",
          "Publish to a topic's subscribers, kept in its history (docs/topics.md)", "topics",
          path_params=topic_wire.TopicPath, headers=topic_wire.PublishHeaders,
          body=topic_wire.PublishBody, security="internal", server="gateway",
          answers=(Answer(201, "Published at this offset and epoch.", topic_wire.PublishAnswer),
                   Answer(200, "Seen before (same `Idempotency-Key`): the first publication's "
                          "position; nothing published.", topic_wire.PublishAnswer),
                   E400, E401,
                   Answer(404, "No such namespace.", ErrorResponse,
                          codes=("TOPIC_UNKNOWN_NAMESPACE",)),
                   Answer(413, "The body is over `HTTP_MAX_BODY_BYTES`, or `data` over "
                          "`TOPIC_MAX_PUBLICATION_BYTES`.", ErrorResponse,
                          codes=("PAYLOAD_TOO_LARGE", "PUBLICATION_TOO_LARGE")),
                   E422_TOPIC, E503_REDIS)),
    Route("GET", "/internal/v1/topics/{topic}/presence", "topicPresenceInternal",
          "Who is subscribed to a topic (no per-user rule)", "topics",
          path_params=topic_wire.TopicPath, security="internal", server="gateway",
          answers=(Answer(200, "The topic's live connections.", topic_wire.PresenceAnswer),
                   E401, E404_TOPIC, E422_TOPIC, E503_REDIS)),
    Route("GET", "/internal/v1/connections", "countConnections",
          "Live connections and active sessions on every gateway", "gateway",
          security="internal", server="gateway",
          answers=(Answer(200, "Counted.", internal_api.ConnectionsSummary), E401,
                   Answer(503, "Redis is down.", ErrorResponse,
                          codes=("SERVICE_UNAVAILABLE",)))),
    Route("GET", "/internal/v1/sessions/{session_id}/connections", "sessionConnections",
          "Whether a session is connected, and how many times", "gateway",
          path_params=internal_api.SessionPath, security="internal", server="gateway",
          answers=(Answer(200, "Counted.", internal_api.SessionConnections), E401, E422,
                   Answer(503, "Redis is down.", ErrorResponse,
                          codes=("SERVICE_UNAVAILABLE",)))),
)  # fmt: skip

# Internal on-behalf routes name the user in the path besides the public route's own parameters.
_USER_PATH_ROUTES = {r.operation_id for r in _ON_BEHALF}

SERVERS = {
    "gateway": {"url": "http://localhost:8000", "description": "gateway (GATEWAY_PORT)"},
    "notifications": {
        "url": "http://localhost:8001",
        "description": "notifications_svc (NOTIFICATIONS_URL)",
    },
    "agent": {"url": "http://localhost:8002", "description": "agent_svc (AGENT_URL)"},
}


def sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event, as OpenAPI (before 3.2's `itemSchema`) has `schema` describe each
    event of a `text/event-stream`: its `data` line is JSON matching `data` (the same shape
    OpenAPI 3.2 uses for SSE items)."""
    return {
        "type": "object",
        "properties": {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            "id": {"type": "string", "description": "the resume stream's `id:` line"},
            "event": {"type": "string", "description": "always the default, `message`"},
        },
        "required": ["data"],
    }


def _types(routes: tuple[Route, ...]) -> list[Any]:
    found: list[Any] = []
    for route in routes:
        if route.body is not None:
            found.append(route.body)
        found.extend(a.body for a in route.answers if a.body is not None)
    return found


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    sources: list[tuple[str, type[msgspec.Struct] | None]] = [
        ("path", route.path_params),
        ("query", route.query),
        ("header", route.headers),
    ]
    if route.operation_id in _USER_PATH_ROUTES:
        sources.insert(0, ("path", notifications_internal.UserPath))
    for location, struct in sources:
        if struct is None:
            continue
        for name, schema, required in fields(struct):
            description = schema.pop("description", None)
            param: dict[str, Any] = {
                "name": name,
                "in": location,
                "required": required or location == "path",
                "schema": schema,
            }
            if description:
                param["description"] = description
            params.append(param)
    return params


def _answer(answer: Answer, schemas: Schemas) -> dict[str, Any]:
    description = answer.description
    if answer.codes:
        description += " Codes: " + ", ".join(f"`{c}`" for c in answer.codes) + "."
    out: dict[str, Any] = {"description": description}
    if answer.body is not None:
        schema = schemas.of(answer.body)
        if answer.media == SSE:
            schema = sse_event(schema)
        out["content"] = {answer.media: {"schema": schema}}
    if answer.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in answer.headers.items()
        }
    if answer.codes:
        out["x-error-codes"] = list(answer.codes)
    return out


def _operation(route: Route, schemas: Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "content": {JSON: {"schema": schemas.of(route.body)}},
        }
    op["responses"] = {str(a.status): _answer(a, schemas) for a in route.answers}
    op["security"] = [{route.security: []}] if route.security else []
    if route.server is not None:
        op["servers"] = [SERVERS[route.server]]
    return op


def _document(
    title: str,
    description: str,
    routes: tuple[Route, ...],
    security: dict[str, Any],
    server: dict[str, str],
) -> dict[str, Any]:
    # ChatErrorCode: the codes an SSE `error` event carries (ErrorEvent.error.code).
    schemas = Schemas(
        [*_types(routes), chat_wire.ChatErrorCode], named={"ChatEvent": chat_wire.ChatEvent}
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": VERSION, "description": description},
        "servers": [server],
        "paths": paths,
        "components": {"schemas": schemas.components, "securitySchemes": security},
    }


def public_openapi() -> dict[str, Any]:
    """What the gateway serves to clients (REST facade, chat SSE, health)."""
    return _document(
        "Real-time backend: public HTTP API",
        "Served by the gateway, the only public entry point. Every error is "
        '`{"error": {"code", "message", "details"}}` with a stable `code`. The WebSocket '
        "protocol is the AsyncAPI document at `/api/v1/asyncapi.json`.",
        PUBLIC_ROUTES,
        {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        # Relative: "try it out" on a gateway's docs page calls that same gateway.
        {"url": "/", "description": "the gateway serving this document (any instance)"},
    )


def internal_openapi() -> dict[str, Any]:
    """The `/internal/` routes of the three services. Never served through the gateway."""
    return _document(
        "Real-time backend: internal API",
        "Service-to-service routes under `/internal/` (bearer `INTERNAL_TOKEN`). Not reachable "
        "through the gateway's public routes or the edge proxy.",
        INTERNAL_ROUTES,
        {"internal": {"type": "http", "scheme": "bearer", "description": "INTERNAL_TOKEN"}},
        SERVERS["gateway"],
    )
