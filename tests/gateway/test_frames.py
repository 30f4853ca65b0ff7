"""Pure client-frame decoding and the gateway's own server frames."""

from __future__ import annotations

import json

import pytest

from gateway import frames
from shared.errors import BadRequest


def test_classify_reads_only_the_type() -> None:
    """The type of any object with a string `type`, other fields ignored."""
    assert frames.classify('{"type": "message", "message": "hi", "extra": [1]}') == "message"
    assert frames.classify(b'{"type": "ping"}') == "ping"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{", "INVALID_JSON"),
        ("", "INVALID_JSON"),
        ("42", "INVALID_MESSAGE"),
        ('{"type": null}', "INVALID_MESSAGE"),
        ("{}", "INVALID_MESSAGE"),
        ("[" * 100_000, "INVALID_MESSAGE"),  # not an object: refused before any recursion
        ('{"type": "ping", "x": ' + "[" * 100_000, "INVALID_JSON"),
        ('{"type": "ping", "x": ' + '{"a":' * 50_000, "INVALID_JSON"),
    ],
    ids=["open", "empty", "number", "null-type", "no-type", "deep", "deep-field", "deep-objects"],
)
def test_classify_errors(raw: str, code: str) -> None:
    """Malformed frames raise a `BadRequest` whose `frame()` is the error frame to answer with."""
    with pytest.raises(BadRequest) as caught:
        frames.classify(raw)
    assert json.loads(caught.value.frame())["error"]["code"] == code


def test_refresh_and_token_frames() -> None:
    """`refresh_token` needs a string token; expiry frames carry an ISO timestamp in UTC."""
    assert frames.refresh_token('{"type": "refresh_token", "token": "t"}') == "t"
    with pytest.raises(BadRequest) as caught:
        frames.refresh_token('{"type": "refresh_token", "token": 5}')
    assert caught.value.code == "INVALID_MESSAGE"
    with pytest.raises(BadRequest) as caught:
        frames.refresh_token('{"type": "refresh_token", "x": ' + "[" * 100_000)
    assert json.loads(caught.value.frame())["error"]["code"] == "INVALID_JSON"
    assert json.loads(frames.token_refreshed(0)) == {
        "type": "token_refreshed",
        "expires_at": "1970-01-01T00:00:00+00:00",
    }
    assert json.loads(frames.token_expiring(0))["type"] == "token_expiring"
    pong = json.loads(frames.pong())
    assert pong["type"] == "pong" and pong["timestamp"].endswith("+00:00")
