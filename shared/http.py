"""HTTP building blocks every service's Starlette app uses.

- error handlers mapping `AppError` (and Starlette's own 404/405, and anything unexpected) to the
  JSON error body, never a stack trace;
- `read_json`: a size-limited, typed request body (413 over the limit, 400 for malformed JSON,
  422 for wrong fields);
- `require_internal`: the `/internal/` bearer check (constant-time);
- `health_routes`: `/healthz` (alive) and `/readyz` (every dependency check passes, else 503
  naming what is down);
- `metrics_route`: Prometheus exposition of this process's registry (its `process_*` metrics
  from `shared.process_metrics`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import process_metrics
from shared.auth import TokenError, TokenVerifier
from shared.errors import (
    AppError,
    InvalidJson,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
    error_body,
)
from shared.wire import ErrorBody

log = logging.getLogger(__name__)
T = TypeVar("T")


def json_response(content: Any, status_code: int = 200) -> Response:
    """A JSON response encoded by msgspec (handles UUID, datetime and structs natively)."""
    return Response(msgspec.json.encode(content), status_code, media_type="application/json")


def error_response(exc: AppError) -> Response:
    return Response(exc.encode(), exc.status, headers=exc.headers(), media_type="application/json")


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return JSONResponse(error_body("INTERNAL_ERROR", "internal error"), 500)


EXCEPTION_HANDLERS: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    AppError: _app_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing more than `max_bytes` before reading it all (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(body: bytes, type_: type[T]) -> T:
    """Decode `body` as `type_`: 400 INVALID_JSON if it is not JSON (or nested deeper than the
    parser's recursion allows), 422 if the shape is wrong."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec parses nested arrays/objects recursively: `[[[[...` a few thousand deep
        # exhausts the stack. Not JSON we accept, and no reason for a 500.
        raise InvalidJson("request body is not valid JSON: nested too deeply") from None


async def read_json(request: Request, type_: type[T], max_bytes: int) -> T:
    return decode_json(await read_body(request, max_bytes), type_)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


async def verified_user(request: Request, token: str | None = None) -> UUID:
    """The user whom the request's bearer JWT (or `token`, when given) names, checked by the
    app's `TokenVerifier` (`app.state.verifier`); raises `Unauthorized` saying why not."""
    verifier: TokenVerifier = request.app.state.verifier
    try:
        identity = await verifier.verify(token if token is not None else bearer_token(request))
    except TokenError as exc:
        raise Unauthorized(exc.reason) from None
    return identity.user_id


def internal_headers(internal_token: str) -> dict[str, str]:
    """The headers that authenticate a call to another service's `/internal/` endpoints (what
    `require_internal` checks on the other side)."""
    return {"Authorization": f"Bearer {internal_token}"}


def require_internal(request: Request, internal_token: str) -> None:
    """Raise `Unauthorized` unless the request carries `Authorization: Bearer <INTERNAL_TOKEN>`."""
    presented = bearer_token(request)
    if presented is None or not hmac.compare_digest(presented.encode(), internal_token.encode()):
        raise Unauthorized("internal endpoint: missing or wrong internal token")


Check = Callable[[], Awaitable[None]]


class Alive(msgspec.Struct):
    status: str = "alive"


class Ready(msgspec.Struct, omit_defaults=True):
    """`/readyz`: `status` is `ready`, or `unavailable` (503) with `error` naming what is
    down; `checks` maps each dependency to `ok` or `down: <reason>`."""

    status: str
    checks: dict[str, str]
    error: ErrorBody | None = None


def health_routes(checks: Callable[[Request], Mapping[str, Check]]) -> list[Route]:
    """`/healthz` answers while the process runs; `/readyz` runs every named check concurrently
    (2 s each) and answers 503 naming the failed ones."""

    async def healthz(request: Request) -> Response:
        return json_response(Alive())

    async def readyz(request: Request) -> Response:
        named = dict(checks(request))

        async def run(check: Check) -> str:
            try:
                async with asyncio.timeout(2.5):
                    await check()
            except Exception as exc:
                return f"down: {type(exc).__name__}"
            return "ok"

        results = dict(
            zip(named, await asyncio.gather(*(run(c) for c in named.values())), strict=True)
        )
        down = sorted(name for name, result in results.items() if result != "ok")
        if not down:
            return json_response(Ready("ready", results))
        error = ErrorBody("DEPENDENCY_DOWN", f"unreachable: {', '.join(down)}", {"down": down})
        return json_response(Ready("unavailable", results, error), 503)

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


def metrics_route(registry: CollectorRegistry = REGISTRY) -> Route:
    """`/metrics` of `registry`, whose `process_*` metrics never list the open descriptors on the
    event loop where the kernel can count them (`shared.process_metrics`)."""
    process_metrics.replace_default(registry)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics)
