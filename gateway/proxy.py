"""The public REST facade: `/api/v1/...` paths forwarded to the internal service that owns them.

One table (`PUBLIC_PROXY`) maps a public path prefix to an upstream (one shared
`gateway.upstream.Upstream` per upstream, created in the lifespan). The request goes upstream with
the same path, query, body and the client's `Authorization` (the upstream verifies the JWT
itself); the answer comes back as is. An unreachable or slow upstream answers 503 JSON. A path
with `.` or `..` segments is refused, so nothing outside the prefix — `/internal/` above all — is
reachable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.upstream import Upstream, UpstreamError, UpstreamTimeout
from shared.auth import TokenError, TokenVerifier
from shared.errors import NotFound, Unavailable
from shared.http import bearer_token, read_body

log = logging.getLogger(__name__)

# Public prefix -> upstream name (a key of `app.state.upstreams`). Adding a proxied API is one line.
PUBLIC_PROXY: tuple[tuple[str, str], ...] = (
    ("/api/v1/notifications", "notifications"),
    ("/api/v1/push", "notifications"),
    ("/api/v1/sessions", "agent"),
)

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
_REQUEST_HEADERS = ("authorization", "content-type", "accept", "if-none-match", "x-request-id")
_RESPONSE_HEADERS = ("content-type", "cache-control", "etag", "location", "retry-after")


def proxy_routes(table: tuple[tuple[str, str], ...] = PUBLIC_PROXY) -> list[Route]:
    routes: list[Route] = []
    for prefix, upstream in table:
        endpoint = _forwarder(prefix, upstream)
        routes.append(Route(prefix, endpoint, methods=_METHODS))
        routes.append(Route(prefix + "/{rest:path}", endpoint, methods=_METHODS))
    return routes


def _forwarder(prefix: str, upstream: str) -> Callable[[Request], Awaitable[Response]]:
    async def forward(request: Request) -> Response:
        path = request.scope["path"]
        segments = path.split("/")
        if "." in segments or ".." in segments or not path.startswith(prefix):
            raise NotFound(f"no route {path}")
        await _count_request(request)
        client: Upstream = request.app.state.upstreams[upstream]
        settings = request.app.state.settings
        body = await read_body(request, settings.http_max_body_bytes)
        headers = {h: v for h in _REQUEST_HEADERS if (v := request.headers.get(h)) is not None}
        if request.client is not None:
            headers["x-forwarded-for"] = request.client.host
        raw_path = request.scope.get("raw_path") or path.encode()
        query = request.scope.get("query_string", b"")
        target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        try:
            answer = await client.request(request.method, target, content=body, headers=headers)
        except UpstreamTimeout:
            raise Unavailable(
                f"{upstream} service timed out", details={"upstream": upstream}
            ) from None
        except UpstreamError as exc:
            log.warning("upstream unreachable", extra={"upstream": upstream, "error": repr(exc)})
            raise Unavailable(
                f"{upstream} service unavailable", details={"upstream": upstream}
            ) from None
        out = {h: v for h in _RESPONSE_HEADERS if (v := answer.headers.get(h)) is not None}
        return Response(answer.content, answer.status_code, headers=out)

    return forward


async def _count_request(request: Request) -> None:
    """Count the request against its user's rate (`HTTP_USER_RATE_LIMIT`), across gateways;
    raises `RateLimited`. The token is only read here (the upstream verifies it again and
    answers a bad one with 401), so an unverifiable token is not counted."""
    token = bearer_token(request)
    if token is None:
        return
    verifier: TokenVerifier = request.app.state.verifier
    try:
        identity = await verifier.verify(token)
    except TokenError:
        return
    await request.app.state.user_requests.take(identity.user_id)
