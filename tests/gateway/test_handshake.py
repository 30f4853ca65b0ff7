"""Pure handshake decisions: where the token comes from, `last_seq`, the Origin check."""

from __future__ import annotations

import pytest

from gateway.handshake import credentials, origin_allowed
from shared.errors import Refused


def test_subprotocol_wins_and_is_echoed() -> None:
    """`bearer, <JWT>` gives the token and the subprotocol to echo, before header and query."""
    creds = credentials(b"token=q", "Bearer h", ["bearer", "s"])
    assert (creds.token, creds.subprotocol) == ("s", "bearer")


def test_header_then_query() -> None:
    """Without the subprotocol the Authorization header wins over `?token=`."""
    assert credentials(b"token=q", "Bearer h", []).token == "h"
    assert credentials(b"token=q", None, []).token == "q"
    assert credentials(b"token=q", "Basic abc", []).token == "q"
    assert credentials(b"", None, ["chat"]).token is None


def test_last_seq() -> None:
    """`last_seq` is a non-negative integer or absent; anything else is refused."""
    assert credentials(b"last_seq=42", None, []).last_seq == 42
    assert credentials(b"", None, []).last_seq is None
    for bad in (b"last_seq=-1", b"last_seq=x", b"last_seq=" + b"9" * 30):
        with pytest.raises(Refused) as caught:
            credentials(bad, None, [])
        assert caught.value.close_code == 1008


def test_origin() -> None:
    """No Origin: allowed; a listed one (trailing slash ignored): allowed; `*`: all allowed."""
    allowed = ("http://localhost:5173",)
    assert origin_allowed(None, allowed)
    assert origin_allowed("http://localhost:5173/", allowed)
    assert not origin_allowed("https://evil.example", allowed)
    assert origin_allowed("https://evil.example", ("*",))


def test_own_origin_is_allowed_without_being_listed() -> None:
    """A page the gateway served (same host and port as the handshake's Host) may connect; the
    same host on another port, or another host, still needs `CORS_ORIGINS`."""
    allowed = ("http://localhost:5173",)
    assert origin_allowed("http://127.0.0.1:8000", allowed, "127.0.0.1:8000")
    assert origin_allowed("https://API.example.com", allowed, "api.example.com")
    assert not origin_allowed("http://127.0.0.1:9999", allowed, "127.0.0.1:8000")
    assert not origin_allowed("https://evil.example", allowed, "api.example.com")
    assert not origin_allowed("https://evil.example", allowed, None)
