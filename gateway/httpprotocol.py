"""The HTTP side of the gateway's connections: uvicorn's httptools protocol, which checks a plain
WebSocket upgrade itself and lets go of itself once it has handed the connection over.

Every WebSocket starts as an HTTP request that httptools has already parsed. uvicorn then writes
the request out again as bytes for the WebSocket protocol, whose `websockets` parser reads it a
second time (request line, every header, into `Request` and `Headers` objects) before
`websockets` checks it and computes `Sec-WebSocket-Accept`. For a plain upgrade — the one every
browser and client library sends — `plain_upgrade` makes the same RFC 6455 checks on the parsed
headers and `GatewayWebSocketProtocol.upgrade` starts from them. Browsers and most client
libraries offer `permessage-deflate`: with compression off (the gateway's setting) `websockets`
ignores the offer without reading it, and so does this path. Anything else (another method, an
invalid key or version, an extension offered while compression is on, a header `websockets`
would refuse) takes uvicorn's way unchanged, so every refusal is still answered by `websockets`
as before.

Once upgraded, uvicorn's `HttpToolsProtocol` is dropped by the transport, but its `httptools`
parser keeps six bound methods of it: a reference cycle (the protocol, its parser, their
methods, its flow control and event, about 21 objects) that only the garbage collector frees.
`GatewayHttpProtocol` drops the parser once the upgrade is done, so reference counting frees
the rest at once, as uvicorn itself does when a plain HTTP connection ends.

A new connection's first request is read on a budget (`gateway.turns`, docs/decisions.md
"Handshakes admitted on a budget"): past `HANDSHAKE_BUDGET` in one event-loop turn, it waits for
the following turns with its transport paused. Each admitted handshake starts work that runs on
in the turns after it (token check, claims, attach, subscription, greeting, each batched with
the others of its turn), so a storm of connects no longer puts hundreds of them into one turn
that every open connection waits behind.

Each request's scope also carries uvicorn's own `send` of its response (the `BODY_SEND`
extension): the chat SSE response writes its body chunks there, past the middleware's send
wrappers, which pass body messages on unchanged (gateway.chat.SSEResponse). Beside it, `write`
(`write_chunk`) writes a chunk synchronously when `send` would write it at once, so the shared
reply reader can hand a chat answer's tokens to the client's socket without waking the
request's task (gateway.replies).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Sequence

from uvicorn._types import ASGI3Application
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.metrics import HANDSHAKES_DEFERRED
from gateway.turns import PerLoop
from gateway.wsprotocol import GatewayWebSocketProtocol

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, 1.3
# `websockets`' own limits on a request (http11.MAX_NUM_HEADERS, MAX_LINE_LENGTH), less what a
# line holds besides the URL or a header's name and value (`GET `, ` HTTP/1.1`, `: `, CRLF),
# with room to spare: a request near or beyond them goes its way and is refused there.
_MAX_HEADERS = 128
_MAX_LINE = 8192 - 16
# What `websockets` accepts in a header value, and a `Connection` header of tokens alone.
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_TOKENS = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+( *, *[-!#$%&'*+.^_`|~0-9a-zA-Z]+)*")
# Headers whose presence means anything but a plain upgrade to `websockets`: a body, and (with
# compression on) an offered extension, which `websockets` negotiates.
_BODY = frozenset((b"transfer-encoding", b"content-length"))
_BODY_OR_EXTENSION = _BODY | {b"sec-websocket-extensions"}
# New connections' first requests read per event-loop turn: each starts a handshake whose
# work (about 0.3 ms here, over the following turns) comes back batched with the others of its
# turn, so a turn of them stays under the 20 ms stall budget. Measured while 10,000 clients
# connected: worst stall 13-27 ms at 32, 21-27 ms at 64, 23-45 ms unbounded.
HANDSHAKE_BUDGET = 32
_HANDSHAKES = PerLoop(HANDSHAKE_BUDGET, HANDSHAKES_DEFERRED)
# The scope extension naming the server's own `send` of a request's response and its
# synchronous chunk writer: `{"send": send, "write": write}` (`write_chunk`).
BODY_SEND = "gateway.body_send"


def plain_upgrade(
    method: str,
    url: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    compression: bool = False,
) -> bytes | None:
    """The `Sec-WebSocket-Accept` value for a request that `websockets` would accept as it is
    (GET; one `Upgrade: websocket`; `Connection` naming `upgrade`; one 16-byte base64
    `Sec-WebSocket-Key`; one `Sec-WebSocket-Version: 13`; no body; no extension offered unless
    `compression` is off, when `websockets` ignores the offer unread and answers without
    `Sec-WebSocket-Extensions`; within `websockets`' limits), else None. `headers` as httptools
    gives them: names lower case, values stripped."""
    if method != "GET" or len(headers) > _MAX_HEADERS or not url.isascii() or len(url) > _MAX_LINE:
        return None
    not_plain = _BODY_OR_EXTENSION if compression else _BODY
    upgrade = key = version = None
    connection_upgrade = False
    for name, value in headers:
        if len(name) + len(value) > _MAX_LINE or _VALUE.fullmatch(value) is None:
            return None
        if name in not_plain:
            return None
        if name == b"upgrade":
            if upgrade is not None:
                return None
            upgrade = value
        elif name == b"connection":
            if _TOKENS.fullmatch(value) is None:
                return None
            connection_upgrade |= b"upgrade" in [t.strip() for t in value.lower().split(b",")]
        elif name == b"sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif name == b"sec-websocket-version":
            if version is not None:
                return None
            version = value
    if upgrade is None or upgrade.lower() != b"websocket" or not connection_upgrade:
        return None
    if key is None or version != b"13":
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def write_chunk(cycle: RequestResponseCycle, body: bytes) -> bool:
    """Write `body` as the next chunk of `cycle`'s response now, as its `send` would, and say
    so; or write nothing and return False where `send` would wait or refuse: the response has
    not started chunked (or is a HEAD's, or is complete), the client is gone, or its socket is
    backed up (uvicorn's flow control). An empty `body` writes nothing (an empty chunk would end
    the response)."""
    if (
        cycle.chunked_encoding is not True
        or cycle.response_complete
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.transport.is_closing()
    ):
        return False
    if body:
        cycle.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
    return True


class GatewayHttpProtocol(HttpToolsProtocol):
    # Until the connection's first chunk of data arrived (then set on the instance).
    fresh = True

    def data_received(self, data: bytes) -> None:
        if self.fresh:
            self.fresh = False
            handshakes = _HANDSHAKES.of(self.loop)
            if not handshakes.admit():
                self.transport.pause_reading()
                handshakes.defer(self, data)
                return
        super().data_received(data)

    def parse_deferred(self, data: bytes) -> None:
        """Read a first request the handshake budget set aside; nothing once the connection is
        lost or closing (it would not have been read then either)."""
        if self.transport.is_closing():
            return
        self.transport.resume_reading()
        super().data_received(data)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        cycle.scope.setdefault("extensions", {})[BODY_SEND] = {
            "send": cycle.send,
            "write": functools.partial(write_chunk, cycle),
        }
        super()._start_asgi_task(cycle, app)

    def handle_websocket_upgrade(self) -> None:
        protocol_class = self.ws_protocol_class
        # uvicorn's path (its TRACE line among what it keeps) under another WebSocket protocol,
        # at TRACE, and for whatever is not a plain upgrade.
        accept = None
        if (
            protocol_class is not None
            and issubclass(protocol_class, GatewayWebSocketProtocol)
            and not self.logger.isEnabledFor(TRACE_LOG_LEVEL)
        ):
            accept = plain_upgrade(
                self.scope["method"], self.url, self.headers, self.config.ws_per_message_deflate
            )
            if accept is not None:
                self._upgrade(protocol_class, accept)
        if accept is None:
            super().handle_websocket_upgrade()
        self.parser = None  # type: ignore[assignment]

    def _upgrade(self, protocol_class: type[GatewayWebSocketProtocol], accept: bytes) -> None:
        self.connections.discard(self)
        protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        # At TRACE (uvicorn's `connection_made` logs there) this way is not taken.
        protocol.connection_taken(self.transport, self.server, self.client, self.scheme == "https")
        protocol.upgrade(self.url.decode("ascii"), self.headers, accept)
        self.transport.set_protocol(protocol)
