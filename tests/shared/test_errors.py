"""`shared.errors`: every error body has one shape, and each class its status and code."""

from __future__ import annotations

import json

from shared.errors import (
    AppError,
    Conflict,
    NotFound,
    RateLimited,
    Unavailable,
    error_body,
)


def test_error_body_shape() -> None:
    """`error_body` is the `{"error": {code, message, details}}` document."""
    assert error_body("X", "y") == {"error": {"code": "X", "message": "y", "details": None}}


def test_class_status_and_code_and_per_instance_code() -> None:
    """A subclass fixes status and code; `code=` refines the code of one instance only."""
    assert (NotFound.status, NotFound.code) == (404, "NOT_FOUND")
    assert (Conflict.status, Unavailable.status, AppError.status) == (409, 503, 500)
    refined = NotFound("gone", code="SESSION_NOT_FOUND")
    assert refined.code == "SESSION_NOT_FOUND" and NotFound.code == "NOT_FOUND"
    assert json.loads(refined.encode()) == error_body("SESSION_NOT_FOUND", "gone")


def test_rate_limited_rounds_retry_after_up_and_says_it_twice() -> None:
    """`retry_after` is whole seconds, at least 1, in `Retry-After` and in `details`."""
    exc = RateLimited("slow down", retry_after=0.2, details={"limit": 3})
    assert exc.retry_after == 1
    assert exc.headers() == {"Retry-After": "1"}
    assert exc.details == {"limit": 3, "retry_after": 1}
    assert RateLimited("x", retry_after=2.5).retry_after == 3
