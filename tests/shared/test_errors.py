"""`shared.errors`: every error body has one shape, and each class its status and code."""

from __future__ import annotations

import json

import pytest

from shared.errors import (
    AppError,
    Conflict,
    InvalidMessage,
    NotFound,
    RateLimited,
    Refused,
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


def test_frame_is_the_error_frame_of_the_body() -> None:
    """`frame()` is the WebSocket `error` frame carrying the same code, message and details."""
    frame = json.loads(InvalidMessage("no type", details={"field": "type"}).frame())
    assert frame == {"type": "error"} | error_body("INVALID_MESSAGE", "no type", {"field": "type"})


@pytest.mark.parametrize(
    ("close_code", "status", "code"),
    [
        (1008, 403, "POLICY_VIOLATION"),
        (1012, 503, "SERVICE_RESTART"),
        (1013, 503, "TRY_AGAIN_LATER"),
    ],
)
def test_refused_carries_close_code_status_and_code(
    close_code: int, status: int, code: str
) -> None:
    """A refusal closes with its close code; its HTTP status and code follow from it."""
    refused = Refused(close_code, "why")
    assert (refused.close_code, refused.status, refused.code) == (close_code, status, code)
    assert (refused.reason, refused.message) == ("why", "why")
    assert isinstance(refused, AppError)


def test_refused_rejects_a_close_code_it_does_not_know() -> None:
    """A close code without a meaning here is a programming error, named in the exception."""
    with pytest.raises(ValueError, match="1000"):
        Refused(1000, "bye")
