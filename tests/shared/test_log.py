"""Structured logs: one JSON object per line, secrets never written."""

from __future__ import annotations

import json
import logging

from shared.log import JsonFormatter, Scrubber

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def test_scrubber_removes_tokens_and_secrets() -> None:
    """JWTs, token= query values, Bearer credentials and configured secrets are redacted."""
    scrubber = Scrubber(["super-secret-value"])
    text = (
        f"GET /api/v1/ws/x?token={JWT}&last_seq=3 Authorization: Bearer abc.def "
        f"token=opaque123 key=super-secret-value raw {JWT}"
    )
    cleaned = scrubber.scrub(text)
    for leaked in (JWT, "abc.def", "opaque123", "super-secret-value"):
        assert leaked not in cleaned
    assert "last_seq=3" in cleaned


def test_formatter_emits_json_with_extra_fields() -> None:
    """A record becomes one JSON line with level, service, message and extra fields, scrubbed."""
    formatter = JsonFormatter("gateway", Scrubber())
    record = logging.LogRecord("gw", logging.WARNING, __file__, 1, "closing %s", ("conn",), None)
    record.session_id = "s-1"
    record.token = JWT
    line = formatter.format(record)
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["service"] == "gateway"
    assert entry["msg"] == "closing conn" and entry["session_id"] == "s-1"
    assert JWT not in line


def test_scrubbed_line_stays_valid_json() -> None:
    """A message ending in a token query value still parses as JSON after scrubbing."""
    formatter = JsonFormatter("gateway", Scrubber())
    message = '"GET /api/v1/ws/s?token=opaque123" 101'
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, message, None, None)
    entry = json.loads(formatter.format(record))
    assert entry["msg"] == '"GET /api/v1/ws/s?token=[redacted]" 101'
