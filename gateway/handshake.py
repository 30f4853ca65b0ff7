"""The WebSocket handshake's pure decisions: where the client's token is, whether its Origin is
allowed, and which subprotocol to echo.

No I/O: the endpoint feeds it the ASGI scope's headers, query string and offered subprotocols. The
three ways to authenticate, in the order they are looked at: the subprotocol pair
`bearer, <JWT>` (browsers), `Authorization: Bearer <JWT>` (non-browser clients), `?token=<JWT>`
(the seed's way, kept for compatibility).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import msgspec

from shared.errors import Refused
from shared.wire import CloseCode

BEARER_SUBPROTOCOL = "bearer"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client presented: the token (if any), the subprotocol to echo, its resume point."""

    token: str | None
    subprotocol: str | None
    last_seq: int | None


LAST_SEQ_MAX_DIGITS = 18


class HandshakeQuery(msgspec.Struct, kw_only=True):
    """The handshake's query string (for the contract; parsed by `credentials`)."""

    token: Annotated[
        str | None, msgspec.Meta(description="JWT (the seed's way; prefer the subprotocol)")
    ] = None
    last_seq: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                lt=10**LAST_SEQ_MAX_DIGITS,
                description="highest notification `seq` seen: replay everything after it",
            ),
        ]
        | None
    ) = None


class HandshakeHeaders(msgspec.Struct, kw_only=True):
    """The handshake's headers (for the contract)."""

    authorization: Annotated[
        str | None, msgspec.Meta(description="`Bearer <JWT>` (non-browser clients)")
    ] = msgspec.field(default=None, name="Authorization")
    subprotocol: Annotated[
        str | None,
        msgspec.Meta(description="`bearer, <JWT>` (browsers); the server echoes `bearer`"),
    ] = msgspec.field(default=None, name="Sec-WebSocket-Protocol")
    origin: Annotated[
        str | None, msgspec.Meta(description="when present, must be listed in CORS_ORIGINS")
    ] = msgspec.field(default=None, name="Origin")


class HandshakePath(msgspec.Struct):
    session_id: Annotated[str, msgspec.Meta(description="UUID of the chat session")]


def credentials(
    query_string: bytes, authorization: str | None, subprotocols: Sequence[str]
) -> Credentials:
    """The client's token and resume point; raises `Refused` (1008) for a malformed `last_seq`."""
    query = parse_qs(query_string.decode("latin-1"))
    token: str | None = None
    subprotocol: str | None = None
    if BEARER_SUBPROTOCOL in subprotocols:
        # Browsers cannot set headers on a WebSocket: they offer `bearer, <JWT>` and require the
        # server to echo `bearer`, or they drop the connection.
        subprotocol = BEARER_SUBPROTOCOL
        index = subprotocols.index(BEARER_SUBPROTOCOL)
        if index + 1 < len(subprotocols):
            token = subprotocols[index + 1]
    if token is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if token is None and query.get("token"):
        token = query["token"][0]
    return Credentials(token=token, subprotocol=subprotocol, last_seq=_last_seq(query))


def _last_seq(query: dict[str, list[str]]) -> int | None:
    values = query.get("last_seq")
    if not values:
        return None
    raw = values[0]
    if not raw.isdigit() or len(raw) > LAST_SEQ_MAX_DIGITS:
        raise Refused(CloseCode.POLICY_VIOLATION, "last_seq must be a non-negative integer")
    return int(raw)


def origin_allowed(origin: str | None, allowed: Sequence[str], host: str | None = None) -> bool:
    """A handshake without `Origin` comes from a non-browser client and is allowed (it could forge
    the header anyway); a browser's `Origin` must be listed in `CORS_ORIGINS` unless `*` is, or be
    the gateway's own origin: the same host and port as the request's `Host` (a page the gateway
    served, such as /console; a cross-site page cannot set a victim browser's `Host`)."""
    if origin is None:
        return True
    if host and urlsplit(origin).netloc.lower() == host.lower():
        return True
    return "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}
