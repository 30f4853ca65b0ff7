"""The one exception hierarchy of the project, and its mapping to HTTP, WebSocket and SSE.

Raise an `AppError` subclass anywhere; the HTTP layer turns it into a JSON body
`{"error": {"code", "message", "details"}}` with `status`, the WebSocket layer into an `error`
frame (`frame()`: bad input never closes a connection), the SSE layer into an `error` event.
`Refused` is the one error that ends a WebSocket instead: the connection is closed with its
`close_code` and `reason`. Codes are stable strings clients may switch on; messages are for
humans. Infrastructure code raises its own errors (`shared.cluster.ClusterUnavailable`) and the
callers map them to one of these.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import msgspec

from shared.wire import CloseCode, error_frame


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one shape of every error body: `{"error": {"code", "message", "details"}}`."""
    return {"error": {"code": code, "message": message, "details": details}}


class AppError(Exception):
    """Base of every error a client may see. Subclasses fix status and code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code

    def headers(self) -> dict[str, str]:
        """Extra response headers (HTTP) this error calls for."""
        return {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)

    def encode(self) -> bytes:
        return msgspec.json.encode(self.body())

    def frame(self) -> bytes:
        """The WebSocket `error` frame answering the frame that caused this error."""
        return error_frame(self.code, self.message, self.details)


class BadRequest(AppError):
    status, code = 400, "BAD_REQUEST"


class InvalidJson(BadRequest):
    code = "INVALID_JSON"


class InvalidMessage(BadRequest):
    """A WebSocket frame of the wrong shape (not an object, no string `type`, wrong fields)."""

    code = "INVALID_MESSAGE"


class Unauthorized(AppError):
    status, code = 401, "UNAUTHORIZED"


class Forbidden(AppError):
    status, code = 403, "FORBIDDEN"


class NotFound(AppError):
    status, code = 404, "NOT_FOUND"


class Conflict(AppError):
    status, code = 409, "CONFLICT"


class PayloadTooLarge(AppError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class ValidationFailed(AppError):
    status, code = 422, "VALIDATION_ERROR"


class RateLimited(AppError):
    """A limit was reached. `retry_after` (seconds) goes out as `Retry-After` over HTTP and in
    `details.retry_after` everywhere (WebSocket `error` frames included)."""

    status, code = 429, "RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        details: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            message, details=(details or {}) | {"retry_after": self.retry_after}, code=code
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(AppError):
    status, code = 503, "SERVICE_UNAVAILABLE"


# The close codes a refusal uses, with the HTTP status and code that say the same.
_CLOSES: dict[int, tuple[int, str]] = {
    CloseCode.POLICY_VIOLATION: (403, "POLICY_VIOLATION"),
    CloseCode.SERVICE_RESTART: (503, "SERVICE_RESTART"),
    CloseCode.TRY_AGAIN_LATER: (503, "TRY_AGAIN_LATER"),
}


class Refused(AppError):
    """A WebSocket connection refused or ended by the server: close it with `close_code` (a
    `shared.wire.CloseCode`) and `reason`, a short text the client sees. `status` and `code`
    follow from the close code; an unknown close code raises `ValueError`."""

    def __init__(self, close_code: int, reason: str) -> None:
        try:
            status, code = _CLOSES[close_code]
        except KeyError:
            raise ValueError(f"expected a close code of CloseCode, got {close_code}") from None
        super().__init__(reason, code=code)
        self.status = status  # type: ignore[misc]  # per-instance, from the close code
        self.close_code = close_code
        self.reason = reason
