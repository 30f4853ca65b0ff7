"""agent_svc.claude: SDK errors to stable codes, and the conversation sent to the API."""

from __future__ import annotations

import anthropic
import httpx2
import pytest

from agent_svc.claude import classify, conversation
from agent_svc.model import HistoryMessage

_REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/messages")


def _status_error(status: int, error_type: str | None) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": error_type, "message": "m"}} if error_type else None
    return anthropic.APIStatusError(
        "m", response=httpx2.Response(status, request=_REQUEST), body=body
    )


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_status_error(200, "overloaded_error"), "MODEL_OVERLOADED"),
        (_status_error(200, "rate_limit_error"), "MODEL_RATE_LIMITED"),
        (_status_error(200, "api_error"), "MODEL_UNAVAILABLE"),
        (_status_error(429, None), "MODEL_RATE_LIMITED"),
        (_status_error(529, None), "MODEL_OVERLOADED"),
        (_status_error(401, "authentication_error"), "MODEL_AUTH_FAILED"),
        (_status_error(400, "invalid_request_error"), "MODEL_BAD_REQUEST"),
        (_status_error(418, None), "MODEL_UNAVAILABLE"),
        (_status_error(500, "brand_new_error"), "MODEL_ERROR"),
        (anthropic.APITimeoutError(_REQUEST), "MODEL_TIMEOUT"),
        (anthropic.APIConnectionError(request=_REQUEST), "MODEL_UNAVAILABLE"),
        (httpx2.ReadTimeout("slow"), "MODEL_TIMEOUT"),
        (httpx2.RemoteProtocolError("closed"), "MODEL_STREAM_CUT"),
    ],
)
def test_classify(exc: anthropic.APIError | httpx2.HTTPError, code: str) -> None:
    """In-stream errors (status 200) are classified by the body's error type, others by status."""
    assert classify(exc).code == code


def test_conversation_merges_and_drops() -> None:
    """Consecutive same-role turns merge, empty ones go, and the first turn is the user's."""
    history = [
        HistoryMessage("assistant", "orphan"),
        HistoryMessage("user", "a"),
        HistoryMessage("user", "b"),
        HistoryMessage("assistant", " "),
        HistoryMessage("assistant", "c"),
    ]
    assert conversation(history, "d") == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
