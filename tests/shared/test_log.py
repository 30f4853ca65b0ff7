"""Structured logs: one JSON object per line, secrets never written."""

from __future__ import annotations

import json
import logging

from shared.log import JsonFormatter, Sampled, Scrubber, sample

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
    message = '"GET /legacy/ws?token=opaque123" 101'
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, message, None, None)
    entry = json.loads(formatter.format(record))
    assert entry["msg"] == '"GET /legacy/ws?token=[redacted]" 101'


# Every spelling of a token parameter a client or a proxy may produce.
ENCODED_TOKEN_NAMES = ("token", "TOKEN", "%74oken", "t%6Fken", "%74%6F%6B%65%6E", "%2574oken")


def test_scrubber_decodes_parameter_names_before_redacting() -> None:
    """`token=` spelled with percent-encoding (single or double) or another case is redacted;
    other parameters are kept."""
    scrubber = Scrubber()
    for name in ENCODED_TOKEN_NAMES:
        cleaned = scrubber.scrub(f"x {name}=opaque-secret-1&page=2 y")
        assert "opaque-secret-1" not in cleaned, name
        assert "page=2" in cleaned


def test_formatter_drops_the_query_of_a_path_argument() -> None:
    """uvicorn's handshake line (the path with its query as an argument) is written with the
    path only, whatever the query holds; the record itself is left as it was."""
    formatter = JsonFormatter("gateway", Scrubber())
    for name in (*ENCODED_TOKEN_NAMES, "anything"):
        path = f"/api/v1/ws/abc?{name}=opaque-secret-2&last_seq=4"
        args = ("127.0.0.1:5000", path, "[accepted]")
        record = logging.LogRecord(
            "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" %s', args, None
        )
        entry = json.loads(formatter.format(record))
        assert entry["msg"] == (
            '127.0.0.1:5000 - "WebSocket /api/v1/ws/abc?[query dropped]" [accepted]'
        )
        assert record.args == args


def test_formatter_drops_queries_left_in_the_text() -> None:
    """A path with a query already formatted into a message or an extra field loses its query."""
    formatter = JsonFormatter("gateway", Scrubber())
    message = 'GET "/api/v1/chat/stream/m?%74oken=opaque-secret-3" 200'
    record = logging.LogRecord("app", logging.INFO, __file__, 1, message, None, None)
    record.url = "/api/v1/ws/s?t%6Fken=opaque-secret-4"
    line = formatter.format(record)
    entry = json.loads(line)
    assert "opaque-secret" not in line
    assert entry["msg"] == 'GET "/api/v1/chat/stream/m?[query dropped]" 200'
    assert entry["url"] == "/api/v1/ws/s?[query dropped]"


def test_sampled_passes_one_in_n_matching_records_and_every_other_record() -> None:
    """Of 2001 handshake lines the 1st, 1001st and 2001st pass, marked `sampled`; a record
    with another template always passes, unmarked."""
    sampled = Sampled('%s - "WebSocket %s"', 1000)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, ("a", "b"), None)

    handshakes = [record('%s - "WebSocket %s" [accepted]') for _ in range(2001)]
    passed = [i for i, r in enumerate(handshakes) if sampled.filter(r)]
    assert passed == [0, 1000, 2000]
    assert all(getattr(handshakes[i], "sampled", None) == 1000 for i in passed)
    other = record("Started server process [%s]")
    assert sampled.filter(other)
    assert not hasattr(other, "sampled")


def test_sample_replaces_its_filter_and_every_one_removes_it() -> None:
    """`sample()` twice leaves one filter on the logger; `every=1` leaves none."""
    logger = logging.getLogger("test.sampled")
    sample("test.sampled", "x %s", 10)
    sample("test.sampled", "x %s", 5)
    assert [f.every for f in logger.filters if isinstance(f, Sampled)] == [5]
    sample("test.sampled", "x %s", 1)
    assert not [f for f in logger.filters if isinstance(f, Sampled)]
