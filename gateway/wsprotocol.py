"""The gateway's WebSocket wire path: server-to-client text frames framed once, written raw.

A server-to-client frame is unmasked (RFC 6455, 5.1), so its wire bytes — header and payload —
are the same for every recipient. `TextFrame` holds them, built once per published frame; the
fan-out writes the same `bytes` to each recipient's transport.

`GatewayWebSocketProtocol` is uvicorn's sans-I/O `websockets` protocol plus one ASGI extension,
`scope["extensions"][EXTENSION]["sink"]`: the protocol itself, seen by the application as a
`FrameSink` that writes pre-framed bytes straight to the transport while the connection is open and
reports whether the transport's write buffer is over its high-water mark (backpressure). The
handshake stays on uvicorn's standard ASGI path, except that a plain upgrade starts from the
request httptools parsed (`upgrade`, called by `gateway.httpprotocol`) and the 101 answering
`websocket.accept` is written as bytes (the same response and log line, without `websockets`'
response objects and its per-connect "connection open" INFO line); once it is done the application
may `adopt` the connection: the protocol then hands every receive event (client messages, the
disconnect) to a `Reader` instead of the ASGI queue, keeps the socket open when the application
returns, and drops the ASGI scope — an idle adopted connection has no task and no ASGI objects.
Close frames, keepalive pings and the closing handshake stay uvicorn's code either way, and the
gateway works without the extension (`gateway.connection.AsgiConnection`). A plain upgrade also
skips what uvicorn builds per connection for its own way: the protocol's constructor sets only
what differs per connection, and the `websockets` protocol starts reading frames at once
(`open_protocol`).

Why raw writes cannot corrupt the stream: every write on this transport, uvicorn's and ours, is
a whole frame (uvicorn drains `ServerProtocol.data_to_send()` right after each `send_*` call), and
nothing on the server side ever fragments a message — ASGI `websocket.send` always sends one
final frame, and so does `TextFrame` — so no raw frame can land inside a fragmented message.
After the close frame (`close_sent`), or once the transport is closing, the sink refuses.

What an idle connection keeps is trimmed (docs/performance-notes.md, "Memory per idle
connection"): the ASGI receive queue is an `Inbox` (a list, and a future only while the
application waits) instead of an `asyncio.Queue` (three deques and an `Event`), the write
flag is a `Flag` instead of an `asyncio.Event`, the handshake's `Request` and `Response` are
dropped once the 101 is written, and the two reference cycles a finished connection used to
leave are broken (the `websockets` frame parser, a generator whose frame refers to its protocol,
is closed when the connection is lost; the extension, the protocol inside its own scope, is
removed when the application returns): reference counting frees a closed connection without
waiting for a full garbage collection (`gateway.heap`).

How many client closes of adopted connections an event-loop turn answers is bounded
(`gateway.turns`, docs/decisions.md "Client closes answered on a budget"): when thousands of
clients close at once, their sockets become readable in the same few polls, and parsing each
close frame, writing the close reply and closing the transport inside those polls stalled the
loop for most of a second. Past `INBOUND_BUDGET` in a turn, a chunk of client data that starts
with a close frame waits in one backlog with its transport paused (so nothing else of that
connection — data, EOF — is read before it), and the backlog is parsed `INBOUND_BUDGET` chunks
per turn. A client's hang-up without a close frame (its EOF; a proxy such as nginx ends its
upstream connections this way when it loses its clients) counts against the same budget: past
it, the transport stays open, half-closed, and is closed from the backlog. Every other chunk
(messages, pings: live traffic) is parsed at once, as before, never queued behind closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.protocol import Protocol as ProtocolState
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from gateway.metrics import INBOUND_DEFERRED
from gateway.turns import PerLoop

EXTENSION = "gateway.frames"
# A connection failed by a protocol error drains its input until the client has sent nothing
# for DRAIN_QUIET seconds (it has stopped sending: its close reply came, and closing now resets
# nothing it has not read), or LINGER seconds after the close frame at the latest.
LINGER = 2.0
DRAIN_QUIET = 0.1
# Client closes of adopted connections answered per event-loop turn: one costs up to 0.1 ms to
# parse and answer (the close reply's `send` most of it), so a turn of them stays well under the
# 20 ms stall budget.
INBOUND_BUDGET = 100
# The first byte of every client close frame: FIN, no RSV bits (control frames are never
# fragmented or compressed), opcode 8.
_CLOSE_FIRST_BYTE = 0x88
# What the closes' backlog holds for a client's EOF: no chunk of data is ever empty.
_EOF = b""

_FIN_TEXT = 0x81  # FIN bit and opcode 1 (text); no RSV bits: never compressed
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")

_UVICORN_LOGGER = logging.getLogger("uvicorn.error")
# `ServerProtocol`'s attributes as its constructor leaves them, by `max_size`: what
# `open_protocol` copies (and replaces the per-connection ones of).
_OPEN_TEMPLATES: dict[int | None, list[tuple[str, Any]]] = {}

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
# What `urllib.parse.quote` leaves as it is (letters, digits, `_.-~` and `/`): a path made of
# these alone needs no call to it.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.\-~/]*")


def text_frame(payload: bytes) -> bytes:
    """The wire bytes of one unmasked, final text frame carrying `payload` (UTF-8, not
    checked here)."""
    size = len(payload)
    if size < 126:
        return _SHORT.pack(_FIN_TEXT, size) + payload
    if size < 65536:
        return _MEDIUM.pack(_FIN_TEXT, 126, size) + payload
    return _LONG.pack(_FIN_TEXT, 127, size) + payload


def open_protocol(max_size: int | None) -> ServerProtocol:
    """A `websockets` server protocol whose request was parsed elsewhere: its parser reads
    frames (as after `websockets` parsed the request itself), its state is CONNECTING until
    the 101 is written. Built from a template of its constant attributes: no request parser
    started only to be replaced."""
    template = _OPEN_TEMPLATES.get(max_size)
    if template is None:
        model = ServerProtocol(extensions=[], max_size=max_size, logger=_UVICORN_LOGGER)
        template = _OPEN_TEMPLATES[max_size] = list(vars(model).items())
        model.parser.close()
    conn = ServerProtocol.__new__(ServerProtocol)
    # Every attribute in the constructor's order (the per-connection ones replaced below): the
    # instances then share one key table, a 280-byte dict each instead of an 832-byte one.
    for name, value in template:
        setattr(conn, name, value)
    conn.id = uuid.uuid4()
    conn.debug = _UVICORN_LOGGER.isEnabledFor(logging.DEBUG)
    conn.extensions = []
    conn.reader = StreamReader()
    conn.events = []
    conn.writes = []
    conn.parser = ProtocolState.parse(conn)
    next(conn.parser)
    return conn


class TextFrame:
    """One frame for clients: its wire bytes (built at once) and its text (decoded on first use,
    by connections without a `FrameSink`). Immutable; share one instance among recipients."""

    __slots__ = ("_text", "payload", "wire")

    def __init__(self, payload: bytes, text: str | None = None) -> None:
        self.payload = payload
        self.wire = text_frame(payload)
        self._text = text

    @classmethod
    def of(cls, text: str) -> TextFrame:
        return cls(text.encode(), text)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.payload.decode()
        return self._text


class FrameSink(Protocol):
    """What the gateway sees of a connection's transport through the ASGI extension."""

    def write_frames(self, data: bytes) -> bool:
        """Write whole pre-framed frames now, without waiting; False (nothing written) once
        the close frame was sent or the transport is closing."""
        ...

    @property
    def write_paused(self) -> bool:
        """Whether the transport's write buffer is over its high-water mark."""
        ...

    async def wait_writable(self) -> None:
        """Return once the write buffer is under its low-water mark or the connection is
        lost."""
        ...

    def abort(self) -> None:
        """Drop the connection without a closing handshake, discarding unsent bytes."""
        ...

    async def close_with(self, code: int, reason: str) -> None:
        """Send the close frame (once the write buffer has room) and start the closing
        handshake; raises `ClientDisconnected` on a lost connection."""
        ...

    def adopt(self, reader: Reader) -> None:
        """Own the connection's read side from now on: every receive event (held ones first)
        goes to `reader`, not to the ASGI application, which may return without closing."""
        ...

    def resume_reading(self) -> None:
        """Read from the socket again (paused by each client message until it is taken)."""
        ...


class Reader(Protocol):
    """Who takes a connection's receive events once the protocol owns it (`FrameSink.adopt`)."""

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        """Take one event (a message or the disconnect) without waiting, in arrival order.
        The protocol pauses reading right after handing over a message: the reader calls
        `FrameSink.resume_reading()` later (once it has taken the message), never from here."""
        ...


class Inbox:
    """The ASGI receive queue of one connection: what uvicorn's protocol uses of
    `asyncio.Queue` (`put_nowait`, `get`, `empty`), at the cost of a list. One consumer (the
    application's `receive`); a second concurrent `get()` raises. Cancelling `get()` is safe:
    no message is lost."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None  # only while `get()` waits

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def pop(self) -> ASGIReceiveEvent:
        """The oldest event, without waiting; IndexError when empty."""
        return self._items.pop(0)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("Inbox.get() is already waiting: one consumer only")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """What uvicorn's protocol uses of `asyncio.Event` for its `writable` flag (`set`, `clear`,
    `is_set`, `wait`), with futures only while someone waits. Starts set."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


# Client closes of adopted connections, answered `INBOUND_BUDGET` a turn.
_CLOSES = PerLoop(INBOUND_BUDGET, INBOUND_DEFERRED)


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol that also offers itself as the connection's `FrameSink`
    (pass the class as uvicorn's `ws` setting)."""

    # A plain attribute, not a property over uvicorn's `writable` event: it is read once per
    # frame and recipient on the fan-out path.
    write_paused = False
    # Set once the endpoint handed the connection over (`adopt`): receive events go to it.
    adopted = False
    # Set once a protocol error (a frame over WS_MAX_MESSAGE_BYTES, invalid UTF-8) was answered
    # with its close frame: what the client still sends is read and dropped until it hangs up,
    # goes quiet for `DRAIN_QUIET` or `LINGER` seconds pass.
    draining = False
    drain_deadline = 0.0  # loop time at which a drain ends whatever the client still sends
    # Set while a chunk of client data, or the client's EOF, waits in the closes' backlog
    # (`_CLOSES`), the transport paused: it is handled before anything else of this connection.
    deferred = False

    # uvicorn's constructor sets these on every instance; the same values as class attributes
    # cost nothing per connection (an assignment later shadows them on the instance).
    transport: asyncio.Transport = None  # type: ignore[assignment]
    server: tuple[str, int | None] | None = None
    client: tuple[str, int] | None = None
    scheme: Literal["wss", "ws"] = None  # type: ignore[assignment]
    handshake_initiated = False
    handshake_complete = False
    close_sent = False
    disconnected = False
    close_timer: asyncio.TimerHandle | None = None
    close_timeout = 10.0
    initial_response: tuple[int, list[tuple[str, str]], bytes] | None = None
    read_paused = False
    ping_timer: asyncio.TimerHandle | None = None
    pong_timer: asyncio.TimerHandle | None = None
    pending_ping_payload: bytes | None = None
    ping_sent_at = 0.0
    last_ping_rtt = 0.0
    curr_msg_data_type: Literal["text", "bytes"] = "bytes"

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """uvicorn's constructor, less its per-connection cost: the constants are class
        attributes, the queue and the write flag are an `Inbox` and a `Flag` (a few hundred
        bytes instead of ~3.5 KB), and the `websockets` protocol is built by the way the
        connection starts — `connection_taken` (a plain upgrade: already reading frames) or
        `connection_made` (uvicorn's way: parsing the request) — not built, started and then
        replaced."""
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = _UVICORN_LOGGER
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.frames: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvicorn's way: `websockets` parses the request, and negotiates compression if on.
        extensions = []
        if self.config.ws_per_message_deflate:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
        self.conn = ServerProtocol(
            extensions=extensions, max_size=self.config.ws_max_size, logger=_UVICORN_LOGGER
        )
        super().connection_made(transport)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # uvicorn keeps the request and response for the connection's life; of them, only the
        # accept key is written (by `_accept`) and nothing reads them again.
        del self.request
        response = self.__dict__.pop("response")
        if response.status_code == 101:  # the ASGI scope exists only for an upgrade
            self._accept_key = response.headers["Sec-WebSocket-Accept"].encode()
            extensions = self.scope.get("extensions")
            if extensions is not None:
                # ASGI: an extension's value is a dict of its own data.
                extensions[EXTENSION] = {"sink": self}

    def connection_taken(
        self,
        transport: asyncio.Transport,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        secure: bool,
    ) -> None:
        """`connection_made` for a plain upgrade (`upgrade` follows), with the addresses the HTTP
        protocol already read: uvicorn's asks the transport again (a socket object and a system
        call each)."""
        self.conn = open_protocol(self.config.ws_max_size)
        self.connections.add(self)
        self.transport = transport
        self.server, self.client = server, client
        self.scheme = "wss" if secure else "ws"

    def upgrade(self, url: str, headers: Sequence[tuple[bytes, bytes]], accept_key: bytes) -> None:
        """Start from a request `gateway.httpprotocol.plain_upgrade` found plain (so accepted
        by `websockets` as it is), parsed by httptools: the ASGI scope `handle_connect` would
        build from `websockets`' parse of the same request, and its application task.
        `headers` as httptools gives them (names lower case)."""
        self.handshake_initiated = True
        self._accept_key = accept_key
        raw_path, _, query_string = url.partition("?")
        subprotocols: list[str] = []
        scope_headers: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            value = value.strip(b" \t")
            scope_headers.append((name, value))
            if name == b"sec-websocket-protocol":
                subprotocols.extend([token.strip() for token in value.decode("latin-1").split(",")])
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path),
            "raw_path": self.root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": scope_headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}, EXTENSION: {"sink": self}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "websocket.accept"
            and not self.handshake_complete
            and self.initial_response is None
            and not self.disconnected
        ):
            self._accept(message.get("subprotocol"), message.get("headers", ()))
        else:
            await super().send(message)

    def _accept(self, subprotocol: str | None, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """uvicorn's `websocket.accept`, written straight: the same log line and the same 101
        (`websockets` computed its `Sec-WebSocket-Accept` in `handle_connect`) without its
        `Response`, `quote` of every path or the "connection open" INFO
        line `websockets` logs for every connect."""
        scope = self.scope
        client = scope.get("client")
        path = scope["path"]
        if _UNQUOTED.fullmatch(path) is None:
            path = quote(path)
        if scope["query_string"]:
            path = f"{path}?{scope['query_string'].decode('ascii')}"
        address = f"{client[0]}:{client[1]}" if client else ""
        self.logger.info('%s - "WebSocket %s" [accepted]', address, path)
        if self.transport.is_closing():
            return
        output = [_SWITCHING, b"Sec-WebSocket-Accept: ", self._accept_key, b"\r\n"]
        for name, value in (*self.default_headers, *headers):
            output += [name.lower(), b": ", value, b"\r\n"]
        if subprotocol:
            output += [b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n"]
        output.append(b"\r\n")
        self.conn.state = State.OPEN
        self.handshake_complete = True
        self.transport.write(b"".join(output))
        self.start_keepalive()

    def start_keepalive(self) -> None:
        # Called once the 101 is written.
        del self._accept_key
        # The instance dict shares its keys with the class's other instances only until an
        # attribute is deleted (`_accept_key` above, the scope once adopted) or over 30 are
        # set: then it becomes a table of its own, 1.6 KB here; a copy of the same items,
        # made now, takes half of that.
        self.__dict__ = dict(self.__dict__)
        super().start_keepalive()

    def pause_writing(self) -> None:
        self.write_paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # Like uvicorn's `writable` event: nobody waits for a lost transport to drain.
        self.write_paused = False
        super().connection_lost(exc)
        # The parser generator's frame refers to `self.conn`, which refers to the generator: a
        # cycle only a full collection would free. No byte arrives after this call.
        self.conn.parser.close()
        if self.adopted:
            # The reader (the gateway's connection) holds this protocol as its sink: the other
            # half of that cycle goes. Its last event, the disconnect, was just handed over.
            self.queue = Inbox()  # type: ignore[assignment]

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        # The application has returned: nobody reads the scope again, and the extension (the
        # protocol itself) inside it is a cycle only a full collection would free.
        extensions = self.scope.get("extensions")
        if extensions is not None:
            extensions.pop(EXTENSION, None)
        if self.adopted:
            # An adopted connection outlives its ASGI task; the scope (headers, state, the
            # extensions) would only weigh on it.
            del self.scope

    async def run_asgi(self) -> None:
        # uvicorn's, except that an application which adopted its connection returns while the
        # connection lives on: the transport stays open.
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.adopted:
            self.transport.close()

    def adopt(self, reader: Reader) -> None:
        if not self.handshake_complete or self.adopted:
            raise RuntimeError(
                f"adopt() expects an open, unadopted connection, got handshake_complete="
                f"{self.handshake_complete} adopted={self.adopted}"
            )
        held, self.queue = self.queue, reader  # type: ignore[assignment]
        self.adopted = True
        assert isinstance(held, Inbox)
        while not held.empty():
            reader.put_nowait(held.pop())
        if self.disconnected:
            # Lost before the adoption: the disconnect just handed over is the last event, and
            # `connection_lost` (which lets go of the reader) has already run.
            self.queue = held

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self.deferred:  # else `parse_deferred` resumes once the chunk is parsed
                self.transport.resume_reading()

    async def close_with(self, code: int, reason: str) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": reason})

    def data_received(self, data: bytes) -> None:
        if self.draining:
            # The close frame is sent: dropped unread, and the drain ends later.
            self._drain_until_quiet()
            return
        # Live traffic (messages, pings) is never held: only a close counts and waits.
        if self.adopted and (data[0] == _CLOSE_FIRST_BYTE or self.deferred):
            inbound = _CLOSES.of(self.loop)
            if self.deferred or not inbound.admit():
                self.deferred = True
                self.transport.pause_reading()
                inbound.defer(self, data)
                return
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's signature
        # Ending a connection costs the same whether its client closed or hung up (the transport's
        # close, the end of the connection): an EOF counts against the closes' budget, and past
        # it the transport is kept open (True), reading stopped, until the backlog closes it.
        if self.adopted and not self.draining:
            inbound = _CLOSES.of(self.loop)
            if not inbound.admit():
                self.deferred = True
                inbound.defer(self, _EOF)
                return True
        return None  # the transport closes itself, as for uvicorn's protocol

    def parse_deferred(self, data: bytes) -> None:
        """Parse a chunk the inbound budget set aside, then read again unless the application
        still holds a message (uvicorn's `read_paused`); for a deferred EOF, close the
        transport. Nothing is parsed once the connection is lost or its transport closing: it
        would not have been read then either."""
        self.deferred = False
        if self.disconnected or self.transport.is_closing():
            return
        if data is _EOF:
            self.transport.close()
            return
        if not self.draining:
            # uvicorn's parse, not `data_received`: the budget counted this chunk already.
            super().data_received(data)
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def handle_parser_exception(self) -> None:
        # uvicorn writes the close frame (1009 for an oversized frame) and closes the socket at
        # once, while the rest of the offending frame is still arriving: closing a socket with
        # unread data makes the kernel send a reset, and the client usually loses the close
        # frame, seeing 1006 instead of 1009 (found by the frame fuzz). So the socket stays
        # open, reading and discarding, until the client hangs up, stops sending for
        # DRAIN_QUIET seconds, or LINGER seconds pass. (It cannot wait for the client's close
        # reply: that follows the rest of the offending frame, unparsed.)
        assert self.conn.close_sent is not None
        code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.draining = True
        # uvicorn's own convention: with a `close_timer` set, the end of the ASGI app (which
        # follows the disconnect at once) leaves closing the transport to the timer.
        self.drain_deadline = self.loop.time() + LINGER
        self._drain_until_quiet()

    def _drain_until_quiet(self) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        when = min(self.loop.time() + DRAIN_QUIET, self.drain_deadline)
        self.close_timer = self.loop.call_at(when, self.transport.close)

    def write_frames(self, data: bytes) -> bool:
        if (
            self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(data)
        return True

    async def wait_writable(self) -> None:
        await self.writable.wait()

    def abort(self) -> None:
        self.transport.abort()
