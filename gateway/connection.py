"""One client WebSocket after its handshake: how frames reach it, and its read loop.

Frames to the client leave in the order they were offered, and a slow client costs a bounded
amount of memory. Two ways out, chosen per connection by `open_connection()`:

- `RawConnection` (in production: the gateway runs `gateway.wsprotocol.GatewayWebSocketProtocol`):
  a frame's wire bytes, built once per published frame (`TextFrame`), are written straight to the
  transport, synchronously, from the delivery path — no task, no ASGI message and no encoding per
  recipient; frames held back until `start_writer()` leave in one write. Backpressure is the
  transport's: while its write buffer is over the high-water mark (64 KiB), `offer()` (the fan-out
  path, which must never wait) counts the frames it still writes, and the one beyond
  `WS_SEND_QUEUE_SIZE` closes the connection with 1013 (slow consumer) instead — the same bound as
  a queue of that many frames behind a full socket.
- `AsgiConnection` (no `FrameSink` in the scope, e.g. under a test client): a bounded list of
  texts (`WS_SEND_QUEUE_SIZE` frames; 1013 when full) drained in order through ASGI
  `websocket.send` by a flush task that exists only while frames are pending.

Either way `offer()` never waits and `put()` (replay, chat) waits for room instead; frames offered
before `start_writer()` are held back (in order) until then.

Reading has two ways in, one handler (`_receive`): the ASGI read loop (`run()`, the endpoint's
task for the connection's life), or, for a `RawConnection` its protocol serves (`own()`), receive
events handed over by the protocol and handled in a task that exists only while some are
pending. Either way the rate limit is enforced, `ping` and `refresh_token` are answered, chat
frames go to `gateway.chat` in bounded background tasks, and anything else is answered with an
`error` frame — bad input never ends the connection.

States: open -> closing (a close code chosen, writer stopped) -> closed (handler returned).
`close()` is idempotent; the first code wins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from starlette.websockets import WebSocket
from uvicorn._types import ASGIReceiveEvent

from gateway import chat, frames, metrics
from gateway.limits import TokenBucket, UserRateLimit, Verdict
from gateway.ordering import SeqOrder
from gateway.state import GatewayState
from gateway.wsprotocol import EXTENSION, FrameSink, TextFrame
from shared import keys
from shared.auth import TokenError, TokenVerifier
from shared.errors import BadRequest, Refused
from shared.settings import Settings
from shared.topic_wire import TOPIC_FRAME_TYPES
from shared.wire import error_frame

if TYPE_CHECKING:  # gateway.subscriptions reaches connections through `Subscriber` only
    from gateway.subscriptions import TopicHub

log = logging.getLogger(__name__)

CHAT_CONCURRENCY = 4  # chat frames of one connection processed at once; more are refused
CLOSE_TIMEOUT = 5.0  # a client that does not read cannot receive a close frame either

_RATE_LIMITED = TextFrame(error_frame("RATE_LIMITED", "too many frames: slow down"))
_USER_RATE_LIMITED = TextFrame(
    error_frame("RATE_LIMITED", "too many frames from this user's connections: slow down")
)
_BINARY = TextFrame(error_frame("INVALID_MESSAGE", "binary frames are not supported"))
_TOO_MANY_IN_FLIGHT = TextFrame(
    error_frame("TOO_MANY_IN_FLIGHT", "wait for an answer before sending more")
)
_SLOW_CONSUMER = "slow consumer: send queue full"


class ConnectionHost(Protocol):
    """What a connection needs from whoever holds it (in production the `ConnectionManager`):
    this narrow interface, not the whole manager."""

    @property
    def state(self) -> GatewayState:
        """The gateway's shared state (settings, Redis, upstreams; chat reads it)."""
        ...

    @property
    def user_rate(self) -> UserRateLimit:
        """The per-user frame rate across this user's connections."""
        ...

    def close_later(self, conn: Connection, code: int, reason: str) -> None:
        """Close `conn` from synchronous code (the delivery path never waits)."""
        ...

    @property
    def topics(self) -> TopicHub:
        """Topic subscriptions (`subscribe`, `publish`, `presence`... frames)."""
        ...

    async def disconnect(self, conn: Connection) -> None:
        """Forget `conn` (it has ended); idempotent."""
        ...

    def end(self, conn: Connection) -> None:
        """`disconnect` without waiting, then `release_slot` once that is done; idempotent."""
        ...

    def release_slot(self) -> None:
        """Give back the instance slot the connection's handshake took."""
        ...


def open_connection(
    host: ConnectionHost,
    websocket: WebSocket,
    conn_id: str,
    user_id: UUID,
    session_id: UUID,
    expires_at: float,
) -> Connection:
    """A `RawConnection` when the server offers a `FrameSink` for this WebSocket, else an
    `AsgiConnection`."""
    extension = (websocket.scope.get("extensions") or {}).get(EXTENSION) or {}
    sink: FrameSink | None = extension.get("sink")
    if sink is not None:
        return RawConnection(host, websocket, conn_id, user_id, session_id, expires_at, sink)
    return AsgiConnection(host, websocket, conn_id, user_id, session_id, expires_at)


class Connection:
    """A live connection. Created (through `open_connection()`) by the endpoint once the client
    is authenticated. Subclasses own the way frames leave."""

    __slots__ = (
        "__weakref__",
        "_bucket",
        "_chat_tasks",
        "_host",
        "_limit",
        "_started",
        "channels",
        "close_code",
        "close_reason",
        "conn_id",
        "expires_at",
        "last_seen",
        "order",
        "session_id",
        "session_key",
        "user_id",
        "warned",
        "websocket",
    )

    def __init__(
        self,
        host: ConnectionHost,
        websocket: WebSocket,
        conn_id: str,
        user_id: UUID,
        session_id: UUID,
        expires_at: float,
    ) -> None:
        settings: Settings = host.state.settings
        self._host = host
        # None once the connection is adopted (`RawConnection.own()`): the ASGI side is gone.
        self.websocket: WebSocket | None = websocket
        self.conn_id = conn_id
        self.user_id = user_id
        self.session_id = session_id
        self.session_key = str(session_id)
        self.channels = (
            keys.user_channel(user_id).encode(),
            keys.session_channel(session_id).encode(),
        )
        self.expires_at = expires_at
        self.warned = False
        self.last_seen = time.monotonic()
        # Notification ordering (seq, replay), decided without I/O; the manager acts on it.
        self.order = SeqOrder()
        self.close_code: int | None = None
        self.close_reason = ""
        self._limit = settings.ws_send_queue_size
        self._started = False  # frames are held until `start_writer()`
        self._bucket = TokenBucket(settings.ws_rate_limit, settings.ws_rate_burst)
        self._chat_tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} session={self.session_id} user={self.user_id}>"

    # Sending: what every connection offers.

    def start_writer(self) -> None:
        """Let held frames go out (until now they were held back), and every later one."""
        raise NotImplementedError

    def offer(self, frame: TextFrame) -> bool:
        """Send or queue a frame without waiting; a consumer too far behind is closed 1013.
        Returns whether the frame was accepted (False on a closed connection). Not counted in
        `FRAMES_OUT`: the caller counts (the fan-out once per published frame)."""
        raise NotImplementedError

    async def put(self, frame: TextFrame) -> None:
        """Send or queue a frame, waiting for room first (replay and chat: they can afford to
        wait). Returns at once on a closed connection (the frame is dropped with it)."""
        raise NotImplementedError

    async def send_bytes(self, frame: bytes) -> None:
        """`ChatContext.send`: an encoded frame, through `put()`."""
        await self.put(TextFrame(frame))

    def _stop_writer(self) -> None:
        """Send nothing more and free what is queued."""
        raise NotImplementedError

    async def _settle(self) -> None:
        """Before a close frame (not 1013): give what is queued a moment to leave."""

    def _abandon(self) -> None:
        """The close frame could not be sent in time (the client does not read)."""

    async def _send_close(self, code: int, reason: str) -> None:
        assert self.websocket is not None
        await self.websocket.close(code, reason)

    def _slow_consumer(self) -> None:
        metrics.DROPPED.labels("slow_consumer").inc()
        self._host.close_later(self, 1013, _SLOW_CONSUMER)

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame (after what is queued, if the client reads it in time) and stop
        everything this connection runs. Idempotent: the first code wins."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        metrics.CLOSES.labels(str(code), reason.partition(":")[0]).inc()
        if code != 1013:
            # What is already queued (a final replayed notification, an error frame) should
            # reach a client that reads.
            await self._settle()
        self._started = False
        self._stop_writer()
        for task in self._chat_tasks:
            task.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._send_close(code, reason)
        except TimeoutError:
            self._abandon()
        except Exception as exc:  # the client is gone: nothing to close
            log.debug("no close frame", extra={"connection": self.conn_id, "error": repr(exc)})

    # Reading.

    async def run(self, verifier: TokenVerifier) -> int:
        """Read client frames until the client leaves or the connection is closed; returns the
        close code (the client's, or ours). Cancels its writer and chat tasks on the way out."""
        assert self.websocket is not None, "run() reads through ASGI; this connection is adopted"
        receive = self.websocket.receive
        try:
            while True:
                code = await self._receive(await receive(), verifier)
                if code is not None:
                    return code
        finally:
            self._stop_all()

    def _stop_all(self) -> None:
        self._started = False
        self._stop_writer()
        for task in self._chat_tasks:
            task.cancel()

    async def _receive(self, message: Mapping[str, Any], verifier: TokenVerifier) -> int | None:
        """Act on one receive event; the close code (the client's, or ours) once it is the
        disconnect, else None."""
        if message["type"] == "websocket.disconnect":
            return self.close_code or int(message.get("code", 1000))
        metrics.FRAMES_IN.inc()
        self.last_seen = time.monotonic()
        verdict = self._bucket.admit(self.last_seen)
        if verdict is Verdict.DISCONNECT:
            await self.close(1008, "rate limit exceeded")
            return None
        if verdict is Verdict.REFUSE:
            await self.put(_RATE_LIMITED)
            return None
        if not await self._host.user_rate.admit(self.user_id):
            await self.put(_USER_RATE_LIMITED)
            return None
        text = message.get("text")
        if text is None:
            await self.put(_BINARY)
        elif len(text) > self._host.state.settings.ws_max_message_bytes:
            await self.close(1009, "frame too large")
        else:
            await self._handle(text, verifier)
        return None

    async def _handle(self, text: str, verifier: TokenVerifier) -> None:
        # Answers to the client's own frames wait for room in the queue: a client that sends
        # without reading is slowed down (its frames stay unread), not disconnected.
        try:
            kind = frames.classify(text)
            if kind == "ping":
                await self.put(TextFrame.of(frames.pong()))
            elif kind in chat.CHAT_FRAME_TYPES:
                await self._chat(text.encode())
            elif kind == "refresh_token":
                await self.put(await self._refresh(frames.refresh_token(text), verifier))
            elif kind in TOPIC_FRAME_TYPES:
                await self._host.topics.handle(self, text)
            else:
                unknown = error_frame("UNKNOWN_TYPE", f"unknown frame type {kind!r}")
                await self.put(TextFrame(unknown))
        except BadRequest as exc:
            await self.put(TextFrame(exc.frame()))

    async def _refresh(self, token: str, verifier: TokenVerifier) -> TextFrame:
        """Adopt a fresh token of the same user; the frame to answer with."""
        try:
            identity = await verifier.verify(token)
        except TokenError as exc:
            return TextFrame(error_frame("TOKEN_INVALID", exc.reason))
        if identity.user_id != self.user_id:
            return TextFrame(error_frame("TOKEN_INVALID", "token is for another user"))
        self.expires_at, self.warned = identity.expires_at, False
        return TextFrame.of(frames.token_refreshed(identity.expires_at))

    async def _chat(self, raw: bytes) -> None:
        if len(self._chat_tasks) >= CHAT_CONCURRENCY:
            await self.put(_TOO_MANY_IN_FLIGHT)
            return
        context = chat.ChatContext(
            app_state=self._host.state,
            user_id=self.user_id,
            session_id=self.session_id,
            connection_id=self.conn_id,
            send=self.send_bytes,
        )
        task = asyncio.create_task(self._run_chat(context, raw))
        self._chat_tasks.add(task)
        task.add_done_callback(self._chat_tasks.discard)

    async def _run_chat(self, context: chat.ChatContext, raw: bytes) -> None:
        try:
            await chat.handle_ws_frame(context, raw)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("chat frame failed", extra={"connection": self.conn_id})
            failed = error_frame("PROCESSING_ERROR", "the message could not be processed")
            await self.put(TextFrame(failed))


class RawConnection(Connection):
    """Frames go to the transport as pre-framed bytes through the connection's `FrameSink`.

    Once `own()` is called, the protocol hands the connection's receive events to it (a
    `Reader`) instead of the ASGI application, which returns: an idle connection then has no
    task and no ASGI objects at all. A task exists only while received events are handled, one
    at a time and in order, and the connection ends itself (`ConnectionHost.disconnect`, then
    `release_slot`) after the disconnect, as the endpoint does for a connection it runs."""

    __slots__ = ("_behind", "_ended", "_held", "_inbox", "_reader", "_sink")

    def __init__(
        self,
        host: ConnectionHost,
        websocket: WebSocket,
        conn_id: str,
        user_id: UUID,
        session_id: UUID,
        expires_at: float,
        sink: FrameSink,
    ) -> None:
        super().__init__(host, websocket, conn_id, user_id, session_id, expires_at)
        self._sink = sink
        self._held: list[bytes] = []  # wire bytes offered before `start_writer()`
        self._behind = 0  # frames written since the write buffer went over its high-water mark
        self._inbox: list[ASGIReceiveEvent] | None = None  # adopted: events not yet handled
        self._reader: asyncio.Task[None] | None = None  # adopted: runs while `_inbox` has events
        self._ended = False

    def start_writer(self) -> None:
        self._started = True
        if self._held:
            held, self._held = self._held, []
            if self.close_code is None:
                self._sink.write_frames(b"".join(held))

    def offer(self, frame: TextFrame) -> bool:
        if self.close_code is not None:
            return False
        if not self._started:
            if len(self._held) >= self._limit:
                self._slow_consumer()
                return False
            self._held.append(frame.wire)
            return True
        sink = self._sink
        if sink.write_paused:
            self._behind += 1
            if self._behind > self._limit:
                if self._behind == self._limit + 1:  # once: the close is already on its way
                    self._slow_consumer()
                return False
        else:
            self._behind = 0
        return sink.write_frames(frame.wire)

    async def put(self, frame: TextFrame) -> None:
        sink = self._sink
        while self.close_code is None and self._started and sink.write_paused:
            await sink.wait_writable()
        if self.close_code is not None:
            return
        if self._started:
            sink.write_frames(frame.wire)
        else:
            self._held.append(frame.wire)
        metrics.FRAMES_OUT.inc()

    def _stop_writer(self) -> None:
        self._held.clear()

    async def _send_close(self, code: int, reason: str) -> None:
        await self._sink.close_with(code, reason)

    def own(self) -> None:
        """Take the read side over from the ASGI application, which must return without
        closing; from now on the connection ends itself. Events already received come first."""
        self.websocket = None
        self._sink.adopt(self)

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        if self._ended:
            return
        if self._reader is None and item["type"] == "websocket.disconnect":
            # The usual end of an adopted connection: nothing else pending, so it ends here,
            # in the protocol's callback, without a task. After a mass disconnect thousands
            # arrive within a few loop turns; the host finishes their leaving in slices.
            self._stop(int(item.get("code", 1000)))
            self._host.end(self)
            return
        if self._inbox is None:
            self._inbox = []
        self._inbox.append(item)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Handle held events in order until none is left; end the connection at the
        disconnect. The endpoint's error handling, for the adopted connection."""
        verifier = self._host.state.verifier
        try:
            while self._inbox:
                message = self._inbox.pop(0)
                if not self._inbox:
                    # As uvicorn's `receive()`: reading resumes once every message is taken.
                    self._sink.resume_reading()
                code = await self._receive(message, verifier)
                if code is not None:
                    await self._end(code)
                    return
        except Refused as exc:
            await self.close(exc.close_code, exc.reason)
            await self._end(exc.close_code)
        except Exception:
            log.exception("connection failed", extra={"connection": self.conn_id})
            await self.close(1011, "internal error")
            await self._end(1011)
        finally:
            self._reader = None
            if not self._inbox:
                self._inbox = None

    def _stop(self, code: int) -> None:
        """Stop everything; from now on the connection is closed (`code`, unless a close code
        was chosen before) and takes no frame. Events after this are dropped."""
        self._ended = True
        self._inbox = None
        if self.close_code is None:
            self.close_code = code
        self._stop_all()

    async def _end(self, code: int) -> None:
        """Stop everything and leave the host; idempotent."""
        if self._ended:
            return
        self._stop(code)
        try:
            await self._host.disconnect(self)
        except Exception:
            log.exception("disconnect failed", extra={"connection": self.conn_id})
        finally:
            self._host.release_slot()

    def _abandon(self) -> None:
        # The close frame is stuck behind unread bytes: drop the socket and its buffer now
        # rather than hold both until the keepalive ping times out.
        self._sink.abort()


class AsgiConnection(Connection):
    """Frames queue as text and leave through ASGI `websocket.send`, one flush task draining
    them while any are pending."""

    __slots__ = ("_flusher", "_pending", "_room")

    def __init__(
        self,
        host: ConnectionHost,
        websocket: WebSocket,
        conn_id: str,
        user_id: UUID,
        session_id: UUID,
        expires_at: float,
    ) -> None:
        super().__init__(host, websocket, conn_id, user_id, session_id, expires_at)
        self._pending: list[str] = []
        self._flusher: asyncio.Task[None] | None = None  # runs only while frames are pending
        self._room: asyncio.Event | None = None  # created by the first `put()` that must wait

    def start_writer(self) -> None:
        self._started = True
        self._kick()

    def _kick(self) -> None:
        if self._flusher is None and self._started and self._pending:
            self._flusher = asyncio.create_task(self._flush())

    def offer(self, frame: TextFrame) -> bool:
        if self.close_code is not None:
            return False
        if len(self._pending) >= self._limit:
            self._slow_consumer()
            return False
        self._pending.append(frame.text)
        self._kick()
        return True

    async def put(self, frame: TextFrame) -> None:
        while self.close_code is None and len(self._pending) >= self._limit:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if self.close_code is None:
            self._pending.append(frame.text)
            self._kick()
            metrics.FRAMES_OUT.inc()

    async def _flush(self) -> None:
        """Send what is pending, in order, then end (the next frame starts a new flush)."""
        assert self.websocket is not None  # only a `RawConnection` is ever adopted
        send = self.websocket.send
        pending = self._pending
        try:
            while pending:
                text = pending.pop(0)
                if self._room is not None:
                    self._room.set()
                await send({"type": "websocket.send", "text": text})
        except (OSError, RuntimeError) as exc:
            # The client is gone (the read loop sees the disconnect) or the socket was closed:
            # send nothing more; what is offered now fills the queue up to its bound.
            self._started = False
            log.debug("writer stopped", extra={"connection": self.conn_id, "error": repr(exc)})
        finally:
            self._flusher = None

    async def _settle(self) -> None:
        if self._flusher is not None:
            await asyncio.wait((self._flusher,), timeout=0.5)

    def _stop_writer(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        # Free the queued frames now, and wake any `put()` waiting for room (it finds the
        # connection closed and adds nothing more).
        self._pending.clear()
        if self._room is not None:
            self._room.set()
