"""Chat over the gateway: SSE routes, the WebSocket chat frames, and the answer's Redis streams.

A question becomes an answer in three steps, the same for SSE and WebSocket: the session's
single-answer lock is taken (`chat:active:{session_id}`; a second question while one is streaming
gets `CHAT_BUSY` with the running answer's id, which the client can resume or cancel), the
answer's reply stream is opened with its `start` event (carrying the owner), and the request is
added to `chat:requests` for the agent workers. The gateway then only reads the reply stream, so
any gateway instance can serve any answer, and an answer outlives the connection that asked.

HTTP: `POST /api/v1/chat/stream` (the seed's SSE: `data:` lines only, entry id inside the JSON as
`event_id`), `GET /api/v1/chat/stream/{message_id}` (standard SSE with `id:` lines, resuming after
`Last-Event-ID`; 204 once the answer is over, so EventSource stops reconnecting) and
`POST /api/v1/chat/stream/{message_id}/cancel`. SSE streams send `: keep-alive` after
`SSE_KEEPALIVE_INTERVAL` seconds of silence. See docs/chat.md.

WebSocket: the connection loop (gateway) hands every frame whose `type` is in `CHAT_FRAME_TYPES`
to `handle_ws_frame`, which answers through `ChatContext.send` (the connection's bounded send
path): the seed's `message` frame with the complete reply, preceded by `chat_event` frames when
the client asked for `"stream": true`; `{"type": "cancel"}` stops the session's running answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID, uuid4

import msgspec
import redis.asyncio as redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from gateway.httpprotocol import BODY_SEND
from gateway.replies import Entries, ReplyReader, Sink
from gateway.state import GatewayState
from gateway.upstream import Upstream, UpstreamError
from shared import chat_queue, chat_wire, keys, session_lock
from shared.backoff import Backoff
from shared.chat_wire import ChatRequest, Start, Transcript
from shared.errors import (
    AppError,
    Conflict,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from shared.http import bearer_token, internal_headers, json_response, read_json, verified_user
from shared.quotas import DailyTokens, HourlyCount
from shared.redis_client import RedisClient, is_cluster
from shared.session_lock import SessionLock
from shared.settings import Settings
from shared.wire import (
    Message,
    MessageData,
    ToolCallRecord,
    encode,
    error_frame,
    utc_now_iso,
)

CHAT_FRAME_TYPES: frozenset[str] = frozenset({"message", "cancel"})

# What Starlette's StreamingResponse sent for `media_type="text/event-stream"` with these headers.
SSE_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
ORPHAN_TTL = 24 * 3600  # a reply stream no worker ever finished still goes away
QUEUE_FULL_RETRY = 5.0  # seconds a client whose queue is full is told to wait
READ_BLOCK = 1.0  # seconds per blocking read (below the Redis client's socket timeout)
# Seconds a reader waits for an unreachable Redis (a restart, a failover) before telling its
# client the stream was interrupted; the answer itself goes on being written meanwhile.
READ_OUTAGE = 30.0
WORKER_SILENCE = 5.0  # seconds beyond AGENT_RECLAIM_IDLE before a silent worker counts as gone
# (also absorbs clock skew between worker and gateway hosts)
_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
_MAX_ID_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit integers


@dataclass(frozen=True, slots=True)
class ChatContext:
    """What chat needs to know about the connection a frame came from."""

    app_state: GatewayState
    user_id: UUID
    session_id: UUID
    connection_id: str
    send: Callable[[bytes], Awaitable[None]]


# Client input.


class ChatBody(msgspec.Struct):
    message: Annotated[str, msgspec.Meta(max_length=32_000)]
    session_id: UUID | None = None


class WsMessage(msgspec.Struct, tag="message", tag_field="type"):
    message: Annotated[str, msgspec.Meta(max_length=32_000)]
    stream: bool = False


class WsCancel(msgspec.Struct, tag="cancel", tag_field="type"):
    message_id: UUID | None = None


_decode_ws = msgspec.json.Decoder(WsMessage | WsCancel).decode


class CancelAccepted(msgspec.Struct):
    message_id: UUID
    status: str = "cancelling"


class MessageIdPath(msgspec.Struct):
    message_id: UUID


# The same id syntax `resume_stream` checks with `_EVENT_ID`.
EVENT_ID_META = msgspec.Meta(pattern=f"^{_EVENT_ID.pattern}$")


class ResumeQuery(msgspec.Struct, kw_only=True):
    """`GET /api/v1/chat/stream/{message_id}`'s query (EventSource cannot send headers)."""

    token: Annotated[str | None, msgspec.Meta(description="JWT, when no Authorization")] = None
    last_event_id: (
        Annotated[str, EVENT_ID_META, msgspec.Meta(description="when no Last-Event-ID header")]
        | None
    ) = None


class ResumeHeaders(msgspec.Struct, kw_only=True):
    last_event_id: (
        Annotated[str, EVENT_ID_META, msgspec.Meta(description="resume after this event id")] | None
    ) = msgspec.field(default=None, name="Last-Event-ID")


# The answer's streams.


@dataclass(frozen=True, slots=True)
class ChatQuotas:
    """The per-user limits a question is checked against (shared.quotas)."""

    tokens: DailyTokens
    new_sessions: HourlyCount

    @classmethod
    def of(cls, client: RedisClient, settings: Settings) -> ChatQuotas:
        return cls(
            DailyTokens(client, settings.chat_daily_token_budget),
            HourlyCount(client, settings.chat_max_new_sessions_per_hour),
        )


async def open_answer(
    client: RedisClient,
    settings: Settings,
    user_id: UUID,
    session_id: UUID,
    message: str,
    quotas: ChatQuotas,
    *,
    new_session: bool = False,
) -> str:
    """Queue a question for the agent; returns the answer's message id.

    Raises `ValidationFailed` for an empty message, `Unavailable` (`CHAT_UNAVAILABLE`) when no
    agent worker is running, `RateLimited` when the user's token budget is spent
    (`TOKEN_BUDGET_EXHAUSTED`), `new_session` would exceed the sessions per hour
    (`SESSION_LIMIT`) or the user's queue is full (`CHAT_QUEUE_FULL`), and `Conflict`
    (`CHAT_BUSY`, details name the running answer) while another answer streams in the session.
    The question goes to the workers through the user's fair queue (shared.chat_queue)."""
    if not message.strip():
        raise ValidationFailed("message must not be empty")
    if "\x00" in message:
        # PostgreSQL text cannot hold NUL: the worker could never store the question, and the
        # request would fail every delivery before the client heard `AGENT_FAILED`.
        raise ValidationFailed("message must not contain NUL characters")
    if not await workers_alive(client, settings):
        raise Unavailable("no agent worker is running; try again later", code="CHAT_UNAVAILABLE")
    await quotas.tokens.check(user_id)
    if new_session:
        await quotas.new_sessions.count_session(user_id)
    message_id = str(uuid4())
    lock = SessionLock(session_id, message_id, session_lock.ttl_ms(settings))
    if not await lock.acquire(client):
        raise Conflict(
            "an answer is already streaming in this session",
            code="CHAT_BUSY",
            details={"message_id": await session_lock.holder(client, session_id)},
        )
    request = ChatRequest(
        message_id=message_id,
        user_message_id=str(uuid4()),
        session_id=str(session_id),
        user_id=str(user_id),
        message=message,
        created_at=utc_now_iso(),
    )
    reply = keys.chat_reply_stream(message_id)
    start = Start(session_id=str(session_id), message_id=message_id)
    # The start event first (a client learns the answer's id even while it waits in the queue),
    # then the question's admission; if that fails or is refused, the start event goes again.
    admitted = chat_queue.REFUSED
    try:
        async with client.pipeline(transaction=not is_cluster(client)) as pipe:
            pipe.xadd(
                reply,
                {
                    chat_wire.EVENT_FIELD: chat_wire.encode(start),
                    chat_wire.OWNER_FIELD: str(user_id),
                },
            )
            pipe.expire(reply, ORPHAN_TTL)
            await pipe.execute()
        admitted = await chat_queue.admit(
            client,
            user_id,
            message_id,
            chat_wire.sign_request(
                chat_wire.request_key(settings.internal_token), chat_wire.encode(request)
            ),
            max_streaming=settings.chat_max_streaming_per_user,
            max_queued=settings.chat_max_queued_per_user,
        )
    finally:
        if admitted == chat_queue.REFUSED:
            # Nothing was queued: free the session again.
            with contextlib.suppress(redis.RedisError, OSError):
                await client.delete(reply)
                await lock.release(client)
    if admitted == chat_queue.REFUSED:
        raise RateLimited(
            "too many of your questions are waiting; wait for an answer first",
            retry_after=QUEUE_FULL_RETRY,
            details={"max_queued": settings.chat_max_queued_per_user},
            code="CHAT_QUEUE_FULL",
        )
    return message_id


async def workers_alive(client: RedisClient, settings: Settings) -> bool:
    """Whether some agent worker sent a heartbeat lately (`chat:workers`: every second when idle,
    every third of `AGENT_RECLAIM_IDLE` while answering), so a question is not queued for nobody:
    with every worker gone the client hears so at once instead of waiting."""
    since = time.time() - settings.agent_reclaim_idle - WORKER_SILENCE
    return bool(await client.zcount(keys.CHAT_WORKERS, since, "+inf"))


async def owned_answer(client: RedisClient, message_id: str, user_id: UUID) -> None:
    """Raise `NotFound` unless the answer exists (not expired) and belongs to `user_id`."""
    first: Any = await client.xrange(keys.chat_reply_stream(message_id), count=1)
    owner = first[0][1].get(chat_wire.OWNER_FIELD) if first else None
    if owner is None or owner.decode() != str(user_id):
        raise NotFound("no such answer", code="ANSWER_NOT_FOUND")


class ReadInterrupted(Exception):
    """Redis stayed unreachable for `READ_OUTAGE` seconds while an answer was being read."""


_INTERRUPTED = (
    "ANSWER_INTERRUPTED",
    "the answer could not be read for a while; resume it after its last event_id",
)


async def read_batches(
    client: RedisClient,
    message_id: str,
    after: str,
    keepalive: float,
    outage: float | None = None,
    replies: ReplyReader | None = None,
    sink: Sink | None = None,
) -> AsyncGenerator[list[tuple[str, bytes]] | None]:
    """The answer's events after entry id `after`, in order, until its last event, in the
    batches one blocking read returns them (`(event_id, event_json)` each); `None` after each
    `keepalive` seconds of silence. Ends early if the stream expires.

    A Redis that restarts or stops answering is waited for (with backoff, keepalives still
    going out) for up to `outage` seconds, then `ReadInterrupted` is raised: the answer is still
    being written, and the reader picks up where it stopped once Redis is back (`outage` None:
    `READ_OUTAGE`).

    With `replies` (the gateway's shared reader, gateway.replies) the stream is read by one
    `XREAD` together with the other answers' streams; without it (Redis Cluster, where a reader's
    key alone decides its hash slot) by one blocking `XREAD` of its own. Leaving the iteration
    (the client went away) removes the reader from the shared read at once. A `sink` takes what
    it can of the shared reads straight to the client (gateway.replies.Subscription): those
    entries are not yielded here, and the time they came is not silence."""
    key = keys.chat_reply_stream(message_id)
    block = min(READ_BLOCK, keepalive)
    last, quiet_since = after, time.monotonic()
    backoff = Backoff(maximum=2.0)
    outage = READ_OUTAGE if outage is None else outage
    down_since: float | None = None
    shared = (
        replies.subscribe(key, after, sink) if replies is not None else contextlib.nullcontext()
    )
    with shared as subscription:
        while True:
            try:
                if subscription is None:
                    found: Any = await client.xread(
                        {key: last}, count=100, block=max(1, int(block * 1000))
                    )
                    entries: Entries = found[0][1] if found else []
                else:
                    # Entries the sink took count as activity: the wait ends when the silence
                    # since the later of those and the last yield reaches `keepalive`.
                    quiet_since = max(quiet_since, subscription.sunk_at)
                    quiet = time.monotonic() - quiet_since
                    entries = await subscription.next(min(block, max(0.0, keepalive - quiet)))
                    quiet_since = max(quiet_since, subscription.sunk_at)
                gone = not entries and time.monotonic() - quiet_since >= keepalive
                if gone and await client.exists(key):
                    gone = False
                    quiet_since = time.monotonic()
                    yield None
            except (redis.RedisError, OSError):
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since >= outage:
                    raise ReadInterrupted from None
                if now - quiet_since >= keepalive:
                    quiet_since = now
                    yield None
                await backoff.sleep()
                continue
            down_since = None
            backoff.reset()
            if gone:
                return
            if not entries:
                continue
            quiet_since = time.monotonic()
            batch: list[tuple[str, bytes]] = []
            for entry_id, fields in entries:
                last = entry_id.decode()
                event = fields.get(chat_wire.EVENT_FIELD)
                if event is None:
                    continue
                batch.append((last, event))
                if chat_wire.is_terminal(event):
                    yield batch
                    return
            if batch:
                yield batch


async def read_events(
    client: RedisClient,
    message_id: str,
    after: str,
    keepalive: float,
    replies: ReplyReader | None = None,
) -> AsyncGenerator[tuple[str, bytes] | None]:
    """`read_batches`, one event at a time."""
    batches = read_batches(client, message_id, after, keepalive, replies=replies)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if batch is None:
                yield None
                continue
            for item in batch:
                yield item


async def request_cancel(client: RedisClient, settings: Settings, message_id: str) -> None:
    """Ask the worker to stop the answer (idempotent; it keeps the partial answer)."""
    await client.set(keys.chat_cancel(message_id), b"1", ex=settings.chat_reply_ttl)


async def claim_session(
    agent: Upstream, settings: Settings, session_id: UUID, user_id: UUID
) -> None:
    """Make sure the session is the user's (first use claims it) through agent_svc (`agent` is
    the gateway's upstream client, based at `AGENT_URL`).

    Raises `NotFound` for another user's session and `Unavailable` if agent_svc cannot say."""
    try:
        response = await agent.post(
            "/internal/v1/sessions/claim",
            json={"session_id": str(session_id), "user_id": str(user_id)},
            headers=internal_headers(settings.internal_token),
        )
    except UpstreamError:
        raise Unavailable("the agent service is unreachable") from None
    if response.status_code == 403:
        raise NotFound("no such session", code="SESSION_NOT_FOUND")
    if response.status_code == 429:
        retry = float(response.headers.get("retry-after") or 60)
        raise RateLimited(
            "too many new sessions; try again later", retry_after=retry, code="SESSION_LIMIT"
        )
    if response.status_code != 200:
        raise Unavailable(f"the agent service answered {response.status_code}")


MAX_CLAIMS = 200  # per request to agent_svc (its limit)


class ClaimOutcome(msgspec.Struct):
    status: str  # created, owned, forbidden or limited
    retry_after: float | None = None


class ClaimOutcomes(msgspec.Struct):
    outcomes: list[ClaimOutcome]


async def claim_sessions(
    agent: Upstream, settings: Settings, claims: list[tuple[UUID, UUID]]
) -> list[ClaimOutcome]:
    """`claim_session` for many `(session_id, user_id)` claims (`MAX_CLAIMS` per request, the
    requests concurrent): an outcome for each, in order. Raises `Unavailable` if agent_svc
    cannot say for all of them."""
    chunks = [claims[i : i + MAX_CLAIMS] for i in range(0, len(claims), MAX_CLAIMS)]
    answers = await asyncio.gather(*(_claim_chunk(agent, settings, chunk) for chunk in chunks))
    return [outcome for answer in answers for outcome in answer]


async def _claim_chunk(
    agent: Upstream, settings: Settings, claims: list[tuple[UUID, UUID]]
) -> list[ClaimOutcome]:
    body = {"claims": [{"session_id": str(s), "user_id": str(u)} for s, u in claims]}
    try:
        response = await agent.post(
            "/internal/v1/sessions/claims",
            json=body,
            headers=internal_headers(settings.internal_token),
        )
    except UpstreamError:
        raise Unavailable("the agent service is unreachable") from None
    if response.status_code != 200:
        raise Unavailable(f"the agent service answered {response.status_code}")
    try:
        outcomes = msgspec.json.decode(response.content, type=ClaimOutcomes).outcomes
    except msgspec.DecodeError:
        raise Unavailable("the agent service answered nonsense") from None
    if len(outcomes) != len(claims):
        raise Unavailable("the agent service answered another number of claims")
    return outcomes


# HTTP routes.


async def _caller(request: Request, *, allow_query: bool = False) -> UUID:
    token = bearer_token(request)
    if token is None and allow_query:
        token = request.query_params.get("token")  # EventSource cannot send headers
    user_id = await verified_user(request, token)
    await request.app.state.user_requests.take(user_id)  # RateLimited over HTTP_USER_RATE_LIMIT
    return user_id


async def _sse(
    client: RedisClient,
    message_id: str,
    after: str,
    keepalive: float,
    frame: Callable[[bytes, str], bytes],
    replies: ReplyReader | None = None,
    writer: ChunkWriter | None = None,
) -> AsyncGenerator[bytes]:
    """The SSE body: the events of one read go out as one chunk (one socket write). With a
    `writer`, the shared reader writes the chunks of an answer's middle itself while the socket
    takes them (`_sink`); the answer's last event always comes through here."""
    finished = False
    sink = None if writer is None else _sink(writer, frame)
    batches = read_batches(client, message_id, after, keepalive, replies=replies, sink=sink)
    try:
        async for batch in batches:
            if batch is None:
                yield chat_wire.SSE_KEEPALIVE
                continue
            finished = chat_wire.is_terminal(batch[-1][1])
            yield b"".join([frame(event, event_id) for event_id, event in batch])
    except ReadInterrupted:
        cut = chat_wire.error_event(message_id, *_INTERRUPTED)
        yield b"data: " + chat_wire.encode(cut) + b"\n\n"
        return
    finally:
        await batches.aclose()
    if not finished:  # the reply stream expired under the reader: say so rather than just stop
        lost = chat_wire.error_event(
            message_id, "ANSWER_EXPIRED", "the answer is no longer available"
        )
        yield b"data: " + chat_wire.encode(lost) + b"\n\n"


def _sink(writer: ChunkWriter, frame: Callable[[bytes, str], bytes]) -> Sink:
    """What the shared reader calls with a read's entries for one SSE answer: their events
    written as one chunk by `writer`, unless one ends the answer (the body then finishes the
    response) or the writer cannot write now."""

    def sink(entries: Entries) -> bool:
        frames: list[bytes] = []
        for entry_id, fields in entries:
            event = fields.get(chat_wire.EVENT_FIELD)
            if event is None:
                continue
            if chat_wire.is_terminal(event):
                return False
            frames.append(frame(event, entry_id.decode()))
        return not frames or writer.write(b"".join(frames))

    return sink


def _refuse(chunk: bytes) -> bool:
    return False


class ChunkWriter:
    """A response's synchronous chunk writer, once `SSEResponse` has one from the server
    (`write_chunk` of gateway.httpprotocol): `write(chunk)` is True if the chunk went out, False
    if it must be sent the usual way (also before the response has started, and on a server
    without one)."""

    __slots__ = ("write",)

    def __init__(self) -> None:
        self.write: Callable[[bytes], bool] = _refuse


class SSEResponse(Response):
    """A `text/event-stream` response of chunks from `body`, each written as it comes (chunked
    transfer encoding), until `body` ends or the client goes away (then `body` is closed).

    Starlette's `StreamingResponse`, less what it does per chunk that an SSE stream does not
    need: the chunks go to the server's own `send` when it names one (`BODY_SEND`, from
    gateway.httpprotocol), past the middleware's wrappers of `send` — each an extra coroutine
    per chunk, none of which changes a body message. The response start still goes through
    them (CORS adds its headers there). That `send` waits while the client's socket is full, so
    a slow client slows its reader (which then leaves the shared read, gateway.replies) instead
    of the gateway buffering its answer. With a `writer`, the body can also write chunks itself
    between its own (`ChunkWriter`), once the start is out, when the server offers that."""

    def __init__(self, body: AsyncGenerator[bytes], writer: ChunkWriter | None = None) -> None:
        self.events, self.writer = body, writer
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        extension = scope.get("extensions", {}).get(BODY_SEND)
        if extension is not None and self.writer is not None:
            self.writer.write = extension["write"]
        streaming = asyncio.ensure_future(
            self._stream(send if extension is None else extension["send"])
        )
        listening = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((streaming, listening), return_when=asyncio.FIRST_COMPLETED)
        finally:
            streaming.cancel()
            listening.cancel()
            await asyncio.wait((streaming, listening))
        if not streaming.cancelled():
            streaming.result()  # a failure of the stream is the request's failure

    async def _stream(self, send: Send) -> None:
        body = self.events
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await body.aclose()


async def _until_disconnect(receive: Receive) -> None:
    message: AsgiMessage = {}
    while message.get("type") != "http.disconnect":
        message = await receive()


async def chat_stream(request: Request) -> Response:
    """`POST /api/v1/chat/stream`: ask, and stream the answer as the seed's SSE."""
    user_id = await _caller(request)
    settings: Settings = request.app.state.settings
    body = await read_json(request, ChatBody, settings.http_max_body_bytes)
    if body.session_id is None:
        # A session id made here cannot be anyone else's: the worker claims it before answering,
        # so the question skips a round trip to agent_svc and its database transaction. It is
        # counted against the user's new sessions per hour here instead.
        session_id = uuid4()
    else:
        session_id = body.session_id
        await claim_session(request.app.state.upstreams["agent"], settings, session_id, user_id)
    client = request.app.state.redis
    message_id = await open_answer(
        client,
        settings,
        user_id,
        session_id,
        body.message,
        request.app.state.chat_quotas,
        new_session=body.session_id is None,
    )
    writer = ChunkWriter()
    stream = _sse(
        client,
        message_id,
        "0-0",
        settings.sse_keepalive_interval,
        chat_wire.sse_data,
        request.app.state.replies,
        writer,
    )
    return SSEResponse(stream, writer)


async def resume_stream(request: Request) -> Response:
    """`GET /api/v1/chat/stream/{message_id}`: the answer's events after `Last-Event-ID`."""
    user_id = await _caller(request, allow_query=True)
    settings: Settings = request.app.state.settings
    message_id = _message_id(request)
    after = (
        request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0-0"
    )
    if not _EVENT_ID.fullmatch(after) or max(_entry_id(after)) > _MAX_ID_PART:
        # Checked here: Redis would refuse the id only once the 200 stream has started.
        raise ValidationFailed("Last-Event-ID must be an event id like 1700000000000-0")
    client = request.app.state.redis
    await owned_answer(client, message_id, user_id)
    last: Any = await client.xrevrange(keys.chat_reply_stream(message_id), count=1)
    if (
        last
        and _entry_id(last[0][0].decode()) <= _entry_id(after)
        and chat_wire.is_terminal(last[0][1].get(chat_wire.EVENT_FIELD, b""))
    ):
        return Response(status_code=204)  # nothing left: EventSource stops reconnecting
    writer = ChunkWriter()
    stream = _sse(
        client,
        message_id,
        after,
        settings.sse_keepalive_interval,
        chat_wire.sse_resumable,
        request.app.state.replies,
        writer,
    )
    return SSEResponse(stream, writer)


async def cancel_stream(request: Request) -> Response:
    """`POST /api/v1/chat/stream/{message_id}/cancel` → 202; the answer ends with `end`
    (`status: cancelled`) and keeps what was said."""
    user_id = await _caller(request)
    message_id = _message_id(request)
    client = request.app.state.redis
    await owned_answer(client, message_id, user_id)
    await request_cancel(client, request.app.state.settings, message_id)
    return json_response(CancelAccepted(UUID(message_id)), 202)


def _entry_id(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _message_id(request: Request) -> str:
    try:
        return str(UUID(request.path_params["message_id"]))
    except ValueError:
        raise NotFound("no such answer", code="ANSWER_NOT_FOUND") from None


routes: list[Route] = [
    Route("/api/v1/chat/stream", chat_stream, methods=["POST"]),
    Route("/api/v1/chat/stream/{message_id}", resume_stream, methods=["GET"]),
    Route("/api/v1/chat/stream/{message_id}/cancel", cancel_stream, methods=["POST"]),
]


# WebSocket.


async def handle_ws_frame(ctx: ChatContext, raw: bytes) -> None:
    """Answer one chat frame of a connection. Never raises for bad input or a failed answer:
    the client gets an `error` frame with a stable code instead."""
    try:
        frame = _decode_ws(raw)
    except msgspec.ValidationError as exc:
        await ctx.send(error_frame("INVALID_MESSAGE", str(exc)))
        return
    except msgspec.DecodeError:
        await ctx.send(error_frame("INVALID_JSON", "frame is not valid JSON"))
        return
    except RecursionError:  # see gateway.frames.classify
        await ctx.send(error_frame("INVALID_JSON", "frame is not valid JSON: nested too deeply"))
        return
    try:
        if isinstance(frame, WsCancel):
            await _ws_cancel(ctx, frame)
        else:
            await _ws_message(ctx, frame)
    except AppError as exc:
        await ctx.send(error_frame(exc.code, exc.message, exc.details))
    except (redis.RedisError, OSError):
        await ctx.send(error_frame("PROCESSING_ERROR", "chat is unavailable; try again"))


async def _ws_message(ctx: ChatContext, frame: WsMessage) -> None:
    state = ctx.app_state
    settings: Settings = state.settings
    message_id = await open_answer(
        state.redis, settings, ctx.user_id, ctx.session_id, frame.message, state.chat_quotas
    )
    transcript = Transcript()
    events = read_events(
        state.redis, message_id, "0-0", settings.sse_keepalive_interval, state.replies
    )
    try:
        async with contextlib.aclosing(events):
            async for item in events:
                if item is None:
                    continue
                entry_id, event_json = item
                if frame.stream:
                    await ctx.send(chat_wire.ws_chat_event(event_json, entry_id))
                transcript.feed(chat_wire.decode_event(event_json))
    except ReadInterrupted:
        details = {"message_id": message_id, "reply": transcript.reply}
        await ctx.send(error_frame(*_INTERRUPTED, details))
        return
    ending = transcript.ending
    if ending is None:
        details = {"message_id": message_id, "reply": transcript.reply}
        await ctx.send(error_frame("ANSWER_EXPIRED", "the answer is no longer available", details))
        return
    if isinstance(ending, chat_wire.Error):
        details = {"message_id": message_id, "reply": transcript.reply}
        await ctx.send(error_frame(ending.error.code, ending.error.message, details))
        return
    data = MessageData(
        id=message_id,
        reply=transcript.reply,
        tool_calls=msgspec.convert(transcript.tool_calls(), list[ToolCallRecord]),
        tokens_used=ending.tokens_used,
        created_at=utc_now_iso(),
    )
    await ctx.send(encode(Message(data=data)))


async def _ws_cancel(ctx: ChatContext, frame: WsCancel) -> None:
    state = ctx.app_state
    if frame.message_id is not None:
        message_id = str(frame.message_id)
    else:
        running = await session_lock.holder(state.redis, ctx.session_id)
        if running is None:
            raise NotFound("no answer is streaming in this session", code="NOTHING_TO_CANCEL")
        message_id = running
    await owned_answer(state.redis, message_id, ctx.user_id)
    await request_cancel(state.redis, state.settings, message_id)
