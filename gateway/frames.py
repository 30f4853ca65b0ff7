"""Client -> server frames the gateway itself understands, and the gateway's own server frames.

Pure code. `classify()` reads only a frame's `type` (one msgspec pass, unknown fields ignored), so
chat frames are handed on as the raw bytes they arrived as. Besides the seed's `ping`, the gateway
understands `refresh_token`; it emits `token_expiring` and `token_refreshed` (documented in
docs/protocol.md).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from shared.errors import InvalidJson, InvalidMessage
from shared.wire import Pong, encode, utc_now_iso


class _Head(msgspec.Struct):
    type: str


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    """Keeps the connection from the idle timeout; answered with `pong`."""


class RefreshToken(msgspec.Struct, tag="refresh_token", tag_field="type"):
    token: str


class TokenExpiring(msgspec.Struct, tag="token_expiring", tag_field="type"):
    expires_at: str


class TokenRefreshed(msgspec.Struct, tag="token_refreshed", tag_field="type"):
    expires_at: str


NESTED_TOO_DEEPLY = "frame is not valid JSON: nested too deeply"


_decode_head = msgspec.json.Decoder(_Head).decode
_decode_refresh = msgspec.json.Decoder(RefreshToken).decode


def classify(raw: str | bytes) -> str:
    """The frame's `type`; raises `InvalidJson` or `InvalidMessage` otherwise."""
    try:
        return _decode_head(raw).type
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"a frame is a JSON object with a string type: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidJson("frame is not valid JSON") from None
    except RecursionError:
        # msgspec decodes nesting recursively, even of fields it skips: a frame nested a few
        # thousand deep would otherwise escape as an exception and close the connection 1011.
        raise InvalidJson(NESTED_TOO_DEEPLY) from None


def refresh_token(raw: str | bytes) -> str:
    """The token of a `refresh_token` frame; raises `InvalidMessage` (or `InvalidJson`)."""
    try:
        return _decode_refresh(raw).token
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"refresh_token needs a string token: {exc}") from None
    except RecursionError:
        raise InvalidJson(NESTED_TOO_DEEPLY) from None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def pong() -> str:
    return encode(Pong(timestamp=utc_now_iso())).decode()


def token_expiring(expires_at: float) -> str:
    return encode(TokenExpiring(expires_at=_iso(expires_at))).decode()


def token_refreshed(expires_at: float) -> str:
    return encode(TokenRefreshed(expires_at=_iso(expires_at))).decode()
