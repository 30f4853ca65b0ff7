"""shared.chat_wire: event framing for SSE and WebSocket, and folding events into a transcript."""

from __future__ import annotations

import json

import pytest

from shared import chat_wire
from shared.chat_wire import End, Start, Token, ToolCall, ToolResult, Transcript


def test_sse_data_is_the_seed_shape_with_event_id() -> None:
    """A POST-stream event is one `data:` line plus a blank line, the entry id inside the JSON."""
    frame = chat_wire.sse_data(chat_wire.encode(Token(content="hi")), "17-0")
    assert frame == b'data: {"event_id":"17-0","type":"token","content":"hi"}\n\n'


def test_resumable_sse_has_id_line() -> None:
    """A resume-stream event carries a standard `id:` line before its data."""
    frame = chat_wire.sse_resumable(chat_wire.encode(Token(content="x")), "5-1")
    assert frame.startswith(b"id: 5-1\ndata: {")
    assert frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1


def test_ws_chat_event_wraps_the_same_json() -> None:
    """The WebSocket streaming frame holds the SSE event JSON unchanged."""
    frame = json.loads(chat_wire.ws_chat_event(chat_wire.encode(Token(content="a")), "1-0"))
    assert frame == {
        "type": "chat_event",
        "event": {"event_id": "1-0", "type": "token", "content": "a"},
    }


def test_terminal_events_are_recognised_without_decoding() -> None:
    """`end` and `error` end an answer; nothing else does."""
    assert chat_wire.is_terminal(chat_wire.encode(End(message_id="m", tokens_used=1)))
    assert chat_wire.is_terminal(chat_wire.encode(chat_wire.error_event("m", "X", "y")))
    assert not chat_wire.is_terminal(chat_wire.encode(Start(session_id="s", message_id="m")))


def test_events_round_trip() -> None:
    """Every event type decodes back to itself."""
    events = [
        Start(session_id="s", message_id="m"),
        Token(content="t"),
        ToolCall(id="1", name="n", input={"a": 1}),
        ToolResult(id="1", name="n", content="ok", is_error=True),
        End(message_id="m", tokens_used=3, status="cancelled"),
        chat_wire.error_event("m", "CODE", "text", {"k": 1}),
    ]
    for event in events:
        assert chat_wire.decode_event(chat_wire.encode(event)) == event


def test_transcript_folds_rounds_tool_calls_and_reply() -> None:
    """Tokens after tool calls open a new round; the reply joins all text; tool calls carry
    their results."""
    transcript = Transcript()
    events: list[chat_wire.ReplyEvent] = [
        Start(session_id="s", message_id="m"),
        Token(content="Let me "),
        Token(content="check."),
        ToolCall(id="t1", name="current_time", input={}),
        ToolResult(id="t1", name="current_time", content="noon"),
        Token(content="Noon."),
        End(message_id="m", tokens_used=9),
    ]
    for event in events:
        transcript.feed(event)
    assert transcript.reply == "Let me check.Noon."
    assert [r.text for r in transcript.rounds] == ["Let me check.", "Noon."]
    assert transcript.tool_calls() == [
        {"id": "t1", "name": "current_time", "input": {}, "result": "noon", "is_error": False}
    ]
    assert isinstance(transcript.ending, End)


def test_signed_request_round_trip_and_refusals() -> None:
    """A signed request verifies to its bytes; unsigned, altered, truncated or another key's
    entries raise `ForgedRequest`."""
    key = chat_wire.request_key("i" * 32)
    encoded = b'{"user_id":"a","message":"hi"}'
    signed = chat_wire.sign_request(key, encoded)
    assert chat_wire.verify_request(key, signed) == encoded
    for bad in (
        encoded,
        signed.replace(b'"a"', b'"b"'),
        signed[:-1],
        signed[:20],
        chat_wire.sign_request(chat_wire.request_key("j" * 32), encoded),
    ):
        with pytest.raises(chat_wire.ForgedRequest):
            chat_wire.verify_request(key, bad)
