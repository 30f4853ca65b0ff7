"""agent_svc.claude: SDK errors to stable codes, the conversation sent to the API, and a round
folded from the SDK's raw stream events."""

from __future__ import annotations

import anthropic
import httpx2
import pytest
from anthropic.types import (
    InputJSONDelta,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageStreamEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)

from agent_svc.claude import RoundResult, classify, conversation
from agent_svc.model import HistoryMessage, ModelError

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


def _tool_round(*fragments: str) -> list[RawMessageStreamEvent]:
    start_text = RawContentBlockStartEvent(
        type="content_block_start", index=0, content_block=TextBlock(type="text", text="")
    )
    text = RawContentBlockDeltaEvent(
        type="content_block_delta", index=0, delta=TextDelta(type="text_delta", text="Hi")
    )
    tool = ToolUseBlock(type="tool_use", id="toolu_1", name="lookup", input={})
    events: list[RawMessageStreamEvent] = [
        start_text,
        text,
        RawContentBlockStopEvent(type="content_block_stop", index=0),
        RawContentBlockStartEvent(type="content_block_start", index=1, content_block=tool),
    ]
    for fragment in fragments:
        delta = InputJSONDelta(type="input_json_delta", partial_json=fragment)
        events.append(RawContentBlockDeltaEvent(type="content_block_delta", index=1, delta=delta))
    events.append(RawContentBlockStopEvent(type="content_block_stop", index=1))
    return events


def test_round_result_folds_text_and_tool_input() -> None:
    """Text deltas are returned as they come and joined into their block; a tool's input is
    parsed from its fragments when the block stops."""
    result = RoundResult()
    texts = [result.feed(event) for event in _tool_round("", '{"city": ', '"Paris"}')]
    assert [t for t in texts if t] == ["Hi"]
    assert result.params() == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"city": "Paris"}},
    ]
    assert result.tool_calls() == result.params()[1:]


def test_round_result_refuses_a_malformed_tool_input() -> None:
    """Tool input that is not a JSON object is a MODEL_ERROR, not a crash of the agent."""
    result = RoundResult()
    with pytest.raises(ModelError) as error:
        for event in _tool_round('{"city": '):
            result.feed(event)
    assert error.value.code == "MODEL_ERROR"
