"""One client WebSocket after its handshake: its send queue, its writer, its read loop.

Every frame to the client goes through one bounded queue drained in order, so frames leave in
the order they were queued and a slow client costs at most `WS_SEND_QUEUE_SIZE` frames of memory:
`offer()` (the fan-out path, which must never wait) closes it with 1013 when the queue is full;
`put()` (replay, chat) waits for room instead. The queue is a plain list (56 bytes empty; a deque
costs 760 with its first block, and at most `WS_SEND_QUEUE_SIZE` entries make popping its head
cheap) drained by a flush task that exists only while frames are pending: an idle connection holds
no writer task, no `asyncio.Queue` and no futures (at 10k connections that is what idle memory is
spent on).

The read loop enforces the rate limit, answers `ping` and `refresh_token`, hands chat frames to
`gateway.chat` in bounded background tasks, and answers anything else with an `error` frame — bad
input never ends the connection.

States: open -> closing (a close code chosen, writer stopped) -> closed (handler returned).
`close()` is idempotent; the first code wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING
from uuid import UUID

from starlette.websockets import WebSocket

from gateway import chat, frames, metrics
from gateway.limits import TokenBucket, Verdict
from shared import keys
from shared.auth import TokenError, TokenVerifier
from shared.wire import error_frame

if TYPE_CHECKING:
    from gateway.manager import ConnectionManager

log = logging.getLogger(__name__)

CHAT_CONCURRENCY = 4  # chat frames of one connection processed at once; more are refused
CLOSE_TIMEOUT = 5.0  # a client that does not read cannot receive a close frame either

_RATE_LIMITED = error_frame("RATE_LIMITED", "too many frames: slow down").decode()
_BINARY = error_frame("INVALID_MESSAGE", "binary frames are not supported").decode()
_TOO_MANY_IN_FLIGHT = error_frame(
    "TOO_MANY_IN_FLIGHT", "wait for an answer before sending more"
).decode()


class Connection:
    """A live connection. Created by the endpoint once the client is authenticated."""

    __slots__ = (
        "__weakref__",
        "_bucket",
        "_chat_tasks",
        "_flusher",
        "_limit",
        "_manager",
        "_pending",
        "_room",
        "_started",
        "channels",
        "close_code",
        "close_reason",
        "conn_id",
        "expires_at",
        "last_seen",
        "last_seq",
        "pending_seq",
        "replaying",
        "session_id",
        "session_key",
        "user_id",
        "warned",
        "websocket",
    )

    def __init__(
        self,
        manager: ConnectionManager,
        websocket: WebSocket,
        conn_id: str,
        user_id: UUID,
        session_id: UUID,
        expires_at: float,
    ) -> None:
        settings = manager.settings
        self._manager = manager
        self.websocket = websocket
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
        # Notification ordering: the highest seq delivered (None: not known yet), and while a
        # replay runs, the highest live seq held back for it.
        self.last_seq: int | None = None
        self.replaying = True
        self.pending_seq = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._pending: list[str] = []
        self._limit = settings.ws_send_queue_size
        self._started = False  # frames are held until `start_writer()`
        self._flusher: asyncio.Task[None] | None = None  # runs only while frames are pending
        self._room: asyncio.Event | None = None  # created by the first `put()` that must wait
        self._bucket = TokenBucket(settings.ws_rate_limit, settings.ws_rate_burst)
        self._chat_tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} session={self.session_id} user={self.user_id}>"

    # Sending.

    def start_writer(self) -> None:
        """Let queued frames go out (until now they were held back), and every later one."""
        self._started = True
        self._kick()

    def _kick(self) -> None:
        if self._flusher is None and self._started and self._pending:
            self._flusher = asyncio.create_task(self._flush())

    def offer(self, text: str) -> bool:
        """Queue a frame without waiting; a full queue closes the connection 1013 (slow
        consumer). Returns whether the frame was queued."""
        if self.close_code is not None:
            return False
        if len(self._pending) >= self._limit:
            metrics.DROPPED.labels("slow_consumer").inc()
            self._manager.close_later(self, 1013, "slow consumer: send queue full")
            return False
        self._pending.append(text)
        if self._flusher is None and self._started:
            self._flusher = asyncio.create_task(self._flush())
        return True

    async def put(self, text: str) -> None:
        """Queue a frame, waiting for room (replay and chat: they can afford to wait). Returns at
        once on a closed connection (the frame is dropped with it)."""
        while self.close_code is None and len(self._pending) >= self._limit:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        if self.close_code is None:
            self._pending.append(text)
            self._kick()

    async def send_bytes(self, frame: bytes) -> None:
        """`ChatContext.send`: queue an encoded frame, waiting for room."""
        await self.put(frame.decode())

    async def _flush(self) -> None:
        """Send what is pending, in order, then end (the next frame starts a new flush)."""
        send = self.websocket.send
        pending = self._pending
        try:
            while pending:
                text = pending.pop(0)
                if self._room is not None:
                    self._room.set()
                await send({"type": "websocket.send", "text": text})
                metrics.FRAMES_OUT.inc()
        except (OSError, RuntimeError) as exc:
            # The client is gone (the read loop sees the disconnect) or the socket was closed:
            # send nothing more; what is offered now fills the queue up to its bound.
            self._started = False
            log.debug("writer stopped", extra={"connection": self.conn_id, "error": repr(exc)})
        finally:
            self._flusher = None

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame (after what is queued, if the client reads it in time) and stop
        everything this connection runs. Idempotent: the first code wins."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        metrics.CLOSES.labels(str(code), reason.partition(":")[0]).inc()
        flusher = self._flusher
        if flusher is not None and code != 1013:
            # Give what is already queued (a final replayed notification, an error frame) a
            # moment to reach a client that reads.
            await asyncio.wait((flusher,), timeout=0.5)
        self._started = False
        if self._flusher is not None:
            self._flusher.cancel()
        # Free the queued frames now, and wake any `put()` waiting for room (it finds the
        # connection closed and adds nothing more).
        self._pending.clear()
        if self._room is not None:
            self._room.set()
        for task in self._chat_tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.websocket.close(code, reason)

    # Reading.

    async def run(self, verifier: TokenVerifier) -> int:
        """Read client frames until the client leaves or the connection is closed; returns the
        close code (the client's, or ours). Cancels its writer and chat tasks on the way out."""
        receive = self.websocket.receive
        max_bytes = self._manager.settings.ws_max_message_bytes
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return self.close_code or int(message.get("code", 1000))
                metrics.FRAMES_IN.inc()
                self.last_seen = time.monotonic()
                verdict = self._bucket.admit(self.last_seen)
                if verdict is Verdict.DISCONNECT:
                    await self.close(1008, "rate limit exceeded")
                    continue
                if verdict is Verdict.REFUSE:
                    await self.put(_RATE_LIMITED)
                    continue
                text = message.get("text")
                if text is None:
                    await self.put(_BINARY)
                elif len(text) > max_bytes:
                    await self.close(1009, "frame too large")
                else:
                    await self._handle(text, verifier)
        finally:
            self._started = False
            if self._flusher is not None:
                self._flusher.cancel()
            for task in self._chat_tasks:
                task.cancel()

    async def _handle(self, text: str, verifier: TokenVerifier) -> None:
        # Answers to the client's own frames wait for room in the queue: a client that sends
        # without reading is slowed down (its frames stay unread), not disconnected.
        try:
            kind = frames.classify(text)
            if kind == "ping":
                await self.put(frames.pong())
            elif kind in chat.CHAT_FRAME_TYPES:
                await self._chat(text.encode())
            elif kind == "refresh_token":
                await self.put(self._refresh(frames.refresh_token(text), verifier))
            else:
                await self.put(error_frame("UNKNOWN_TYPE", f"unknown frame type {kind!r}").decode())
        except frames.FrameError as exc:
            await self.put(exc.frame.decode())

    def _refresh(self, token: str, verifier: TokenVerifier) -> str:
        """Adopt a fresh token of the same user; the frame to answer with."""
        try:
            identity = verifier.verify(token)
        except TokenError as exc:
            return error_frame("TOKEN_INVALID", exc.reason).decode()
        if identity.user_id != self.user_id:
            return error_frame("TOKEN_INVALID", "token is for another user").decode()
        self.expires_at, self.warned = identity.expires_at, False
        return frames.token_refreshed(identity.expires_at)

    async def _chat(self, raw: bytes) -> None:
        if len(self._chat_tasks) >= CHAT_CONCURRENCY:
            await self.put(_TOO_MANY_IN_FLIGHT)
            return
        context = chat.ChatContext(
            app_state=self._manager.app_state,
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
            await self.put(failed.decode())
