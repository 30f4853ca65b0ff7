"""The one exception hierarchy of the project, and its mapping to HTTP, WebSocket and SSE.

Raise an `AppError` subclass anywhere; the HTTP layer turns it into a JSON body
`{"error": {"code", "message", "details"}}` with `status`, the WebSocket layer into an `error`
frame or a close with `close_code`, the SSE layer into an `error` event. Codes are stable strings
clients may switch on; messages are for humans.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import msgspec


class AppError(Exception):
    """Base of every error a client may see. Subclasses fix status, code and close code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    close_code: ClassVar[int] = 1011

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
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def encode(self) -> bytes:
        return msgspec.json.encode(self.body())


class BadRequest(AppError):
    status, code, close_code = 400, "BAD_REQUEST", 1008


class InvalidJson(BadRequest):
    code = "INVALID_JSON"


class Unauthorized(AppError):
    status, code, close_code = 401, "UNAUTHORIZED", 1008


class Forbidden(AppError):
    status, code, close_code = 403, "FORBIDDEN", 1008


class NotFound(AppError):
    status, code, close_code = 404, "NOT_FOUND", 1008


class Conflict(AppError):
    status, code, close_code = 409, "CONFLICT", 1008


class PayloadTooLarge(AppError):
    status, code, close_code = 413, "PAYLOAD_TOO_LARGE", 1009


class ValidationFailed(AppError):
    status, code, close_code = 422, "VALIDATION_ERROR", 1008


class RateLimited(AppError):
    """A limit was reached. `retry_after` (seconds) goes out as `Retry-After` over HTTP and in
    `details.retry_after` everywhere (WebSocket `error` frames included)."""

    status, code, close_code = 429, "RATE_LIMITED", 1008

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
    status, code, close_code = 503, "SERVICE_UNAVAILABLE", 1013
