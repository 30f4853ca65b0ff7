"""Chat workers: consume `chat:requests` through the `agents` consumer group and stream answers.

Each worker takes one request at a time, so `AGENT_WORKERS` (per process) times the number of
processes is the number of answers streaming at once; add processes to scale out.

Delivery: at-least-once, finished exactly once. A request is acknowledged (and deleted) only after
its answer is stored and its last event (`end` or `error`) appended. While it answers, a worker
refreshes its claim on the entry (`XCLAIM ... JUSTID`) every third of `AGENT_RECLAIM_IDLE`; a
request idle longer than that — its worker crashed, was killed or stopped — is taken over by
another worker (`XAUTOCLAIM`), which rebuilds what the reply stream already holds and continues
from there: a reader sees every piece of the answer once, with nothing repeated. A request
delivered more than `MAX_DELIVERIES` times ends with an `AGENT_FAILED` error instead of looping.

Cancel: `chat:cancel:{message_id}` is polled every `CANCEL_POLL` seconds while the model streams
(the keys of all the process's answers in one pipeline); when set, the model call is cancelled,
the partial answer is stored with status `cancelled`, and the answer ends with `end`
(`status: cancelled`).

`python -m agent_svc.worker` runs workers without the HTTP API (for scaling them separately).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import msgspec
import redis.asyncio as redis
from prometheus_client import Counter

from agent_svc import builtin_tools, messages, scheduler, sessions
from agent_svc.answer import Answer, ReplyWriter
from agent_svc.model import Model, ModelError, Turn, create_model
from agent_svc.tools import ToolContext, ToolRegistry, load_modules
from shared import chat_queue, chat_wire, consumer_group, db, keys, session_lock
from shared.backoff import Backoff
from shared.chat_wire import ChatRequest, End, Transcript
from shared.quotas import DailyTokens
from shared.redis_client import RedisClient
from shared.session_lock import SessionLock
from shared.settings import Settings

log = logging.getLogger(__name__)

ANSWERS = Counter("chat_answers_total", "Answers finished, by status", ["status"])
MODEL_ERRORS = Counter("chat_model_errors_total", "Answers that failed, by error code", ["code"])
RECLAIMED = Counter("chat_requests_reclaimed_total", "Requests taken over from a stopped worker")
TOKENS = Counter("chat_tokens_total", "Tokens used by finished answers (model-reported)")

MAX_DELIVERIES = 5
DEAD_LETTER_MAX = 10_000  # forged requests kept for inspection (approximately)
CONSUMER_PRUNE_INTERVAL = 300.0
CONSUMER_MAX_IDLE_MS = 3600 * 1000
CANCEL_POLL = 0.2
READ_BLOCK_MS = 1000  # below the Redis client's socket timeout


def raise_if_cancelling(exc: BaseException | None = None) -> None:
    """Re-raise a cancellation that a client library turned into its own error (`exc`), or
    swallowed.

    A cancel that lands while redis-py waits under its socket timeout can surface as a
    `TimeoutError`; a retry loop that caught it would then never stop. A cancel can also vanish
    in redis-py 8.1 (seen on a worker stopped just as its loop sent its first command: the task
    stayed `cancelling()` and went on reading, for ten seconds, until `stop()` gave up on it), so
    the loops ask at the top of every round too."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def ensure_group(client: RedisClient) -> None:
    """Create the chat requests' consumer group (and stream) if missing. Idempotent."""
    await consumer_group.ensure_group(client, keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP)


def build_registry(settings: Settings) -> ToolRegistry:
    """The built-in tools plus the deployer's (`AGENT_TOOL_MODULES`)."""
    registry = ToolRegistry()
    builtin_tools.register(registry)
    load_modules(registry, settings.agent_tool_modules)
    return registry


class Worker:
    """One consumer of the group. `run()` loops until cancelled; errors of Redis or PostgreSQL
    are logged and retried with backoff (the request stays pending and is not lost)."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self._p = pool
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{index}"
        self._idle_ms = int(pool.settings.agent_reclaim_idle * 1000)
        self._beat = pool.settings.agent_reclaim_idle / 3

    async def run(self) -> None:
        backoff = Backoff(base=0.2, maximum=5.0)
        while True:
            raise_if_cancelling()
            try:
                await self._p.redis.zadd(keys.CHAT_WORKERS, {self.consumer: time.time()})
                entry = await self._next()
                if entry is not None:
                    await self._handle(*entry)
                backoff.reset()
            except (redis.RedisError, asyncpg.PostgresError, *db.UNAVAILABLE) as exc:
                raise_if_cancelling(exc)
                log.warning("worker error; retrying", extra={"error": repr(exc)})
                await backoff.sleep()

    async def _next(self) -> tuple[str, dict[bytes, bytes] | None, bool] | None:
        r = self._p.redis
        stream, group = keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP
        try:
            claimed_reply: Any = await r.xautoclaim(
                stream, group, self.consumer, self._idle_ms, count=1
            )
            for entry_id, fields in claimed_reply[1]:
                if entry_id is not None:
                    return _text(entry_id), fields, True
            read: Any = await r.xreadgroup(
                group, self.consumer, {stream: ">"}, count=1, block=READ_BLOCK_MS
            )
        except redis.ResponseError as exc:
            if not consumer_group.is_nogroup(exc):
                raise
            # The stream is gone (Redis restarted without its data, FLUSHALL, a shard replaced):
            # recreate it, or every worker would retry this forever.
            await ensure_group(r)
            return None
        for _, entries in read or []:
            for entry_id, fields in entries:
                return _text(entry_id), fields, False
        return None

    async def _handle(
        self, entry_id: str, fields: dict[bytes, bytes] | None, reclaimed: bool
    ) -> None:
        raw = (fields or {}).get(chat_wire.REQUEST_FIELD) or b""
        try:
            request = chat_wire.decode_request(chat_wire.verify_request(self._p.request_key, raw))
        except chat_wire.ForgedRequest as exc:
            await self._dead_letter(entry_id, raw, str(exc))
            return
        except msgspec.DecodeError:
            log.error("dropping malformed chat request", extra={"entry": entry_id})
            await self._ack(entry_id)
            return
        if reclaimed:
            RECLAIMED.inc()
            log.warning(
                "reclaimed chat request",
                extra={"message_id": request.message_id, "entry": entry_id},
            )
            if await self._deliveries(entry_id) > MAX_DELIVERIES:
                await self._fail(entry_id, request, "AGENT_FAILED", "the answer failed repeatedly")
                return
        transcript = await self._transcript(request)
        if transcript.ending is None:
            await self._answer(entry_id, request, transcript)
        await self._finish(entry_id, request)

    async def _answer(self, entry_id: str, request: ChatRequest, transcript: Transcript) -> None:
        p = self._p
        stored = await messages.stored_answer(p.db, request)
        out = Answer(p.replies, request, transcript, p.registry, self._tool_context(request))
        if stored is not None:  # stored, then the worker died before the last event
            if stored["status"] == "error":
                failed = chat_wire.error_event(
                    request.message_id, "MODEL_ERROR", "the answer failed"
                )
                await out.emit(failed)
            else:
                await out.emit(End(request.message_id, stored["tokens_used"], stored["status"]))
            return
        owned, _ = await sessions.claim(p.db, UUID(request.session_id), UUID(request.user_id))
        if not owned:
            await out.emit(
                chat_wire.error_event(request.message_id, "SESSION_NOT_FOUND", "no such session")
            )
            return
        await messages.store_question(p.db, request)
        turn = Turn(await messages.history(p.db, request), request.message)
        status, error = await self._run_model(entry_id, request, out, turn)
        await out.flush()  # the stored answer is what readers saw
        await messages.store_answer(
            p.db,
            request,
            content=transcript.reply,
            tool_calls=transcript.tool_calls(),
            tokens_used=out.tokens_used,
            status=status,
        )
        # The turn is stored: the session may take its next question while the last event is
        # written, so a client that asks again the moment it sees `end` is never told CHAT_BUSY.
        await self._release(request)
        if error is not None:
            MODEL_ERRORS.labels(error.code).inc()
            await out.emit(chat_wire.error_event(request.message_id, error.code, error.message))
        else:
            await out.emit(End(request.message_id, out.tokens_used, status))
        ANSWERS.labels(status).inc()
        TOKENS.inc(out.tokens_used)
        # Counted against the user's daily budget as the model reported them (the gateway
        # refuses questions once it is spent); a failure to count must not fail the answer.
        try:
            await p.tokens.add(UUID(request.user_id), out.tokens_used)
        except (redis.RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.warning("tokens not counted", extra={"error": repr(exc)})
        log.info(
            "answer finished",
            extra={"message_id": request.message_id, "status": status, "model": p.model.name},
        )

    async def _run_model(
        self, entry_id: str, request: ChatRequest, out: Answer, turn: Turn
    ) -> tuple[str, ModelError | None]:
        """Run the model while watching for cancel and refreshing the claim; returns the status
        (`complete`, `cancelled`, `error`) and the error if any."""
        task = asyncio.create_task(self._p.model.answer(turn, out))
        cancelled = self._p.cancels.watch(request.message_id)
        next_beat = time.monotonic() + self._beat
        try:
            while True:
                timeout = max(0.0, next_beat - time.monotonic())
                done, _ = await asyncio.wait(
                    {task, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if task in done:
                    return _outcome(task)
                if cancelled in done:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await out.settled()
                    return "cancelled", None
                await self._heartbeat(entry_id, request)
                next_beat = time.monotonic() + self._beat
        finally:
            self._p.cancels.unwatch(request.message_id)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _heartbeat(self, entry_id: str, request: ChatRequest) -> None:
        r = self._p.redis
        await r.xclaim(
            keys.CHAT_REQUESTS_STREAM,
            keys.CHAT_REQUESTS_GROUP,
            self.consumer,
            0,
            [entry_id],
            justid=True,
        )
        await self._p.lock(request).refresh(r)
        await r.zadd(keys.CHAT_WORKERS, {self.consumer: time.time()})
        await chat_queue.touch(r, request.user_id, request.message_id)

    async def _transcript(self, request: ChatRequest) -> Transcript:
        transcript = Transcript()
        entries: Any = await self._p.redis.xrange(keys.chat_reply_stream(request.message_id))
        for _, fields in entries:
            raw = fields.get(chat_wire.EVENT_FIELD)
            if raw is not None:
                transcript.feed(chat_wire.decode_event(raw))
        return transcript

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self._p.redis.xpending_range(
            keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP, entry_id, entry_id, 1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    async def _fail(self, entry_id: str, request: ChatRequest, code: str, message: str) -> None:
        event = chat_wire.error_event(request.message_id, code, message)
        await self._p.redis.xadd(
            keys.chat_reply_stream(request.message_id),
            {chat_wire.EVENT_FIELD: chat_wire.encode(event)},
        )
        await self._finish(entry_id, request)

    async def _finish(self, entry_id: str, request: ChatRequest) -> None:
        """Expire the reply stream, release the session, acknowledge and delete the request."""
        r = self._p.redis
        async with r.pipeline(transaction=False) as pipe:
            pipe.expire(keys.chat_reply_stream(request.message_id), self._p.settings.chat_reply_ttl)
            pipe.delete(keys.chat_cancel(request.message_id))
            self._p.lock(request).release_in(pipe)
            pipe.xack(keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP, entry_id)
            pipe.xdel(keys.CHAT_REQUESTS_STREAM, entry_id)
            # The user's place is free: their next waiting question goes to the stream's end.
            chat_queue.finish(
                pipe,
                request.user_id,
                request.message_id,
                self._p.settings.chat_max_streaming_per_user,
            )
            await pipe.execute()

    async def _release(self, request: ChatRequest) -> None:
        """Free the session for its next question (only if this answer still holds it)."""
        await self._p.lock(request).release(self._p.redis)

    async def _dead_letter(self, entry_id: str, raw: bytes, reason: str) -> None:
        """Set aside a request that is not the gateway's (never answered: it may name any user)
        in `chat:requests:dead` for an operator, then acknowledge it."""
        log.error("dead-lettering unsigned chat request", extra={"entry": entry_id, "why": reason})
        await self._p.redis.xadd(
            keys.CHAT_REQUESTS_DEAD_LETTER,
            {b"entry": entry_id, b"reason": reason, chat_wire.REQUEST_FIELD: raw},
            maxlen=DEAD_LETTER_MAX,
            approximate=True,
        )
        await self._ack(entry_id)

    async def _ack(self, entry_id: str) -> None:
        await self._p.redis.xack(keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP, entry_id)
        await self._p.redis.xdel(keys.CHAT_REQUESTS_STREAM, entry_id)

    def _tool_context(self, request: ChatRequest) -> ToolContext:
        p = self._p
        return ToolContext(
            user_id=UUID(request.user_id),
            session_id=UUID(request.session_id),
            message_id=UUID(request.message_id),
            settings=p.settings,
            redis=p.redis,
            http=p.http,
        )


def _outcome(task: asyncio.Task[None]) -> tuple[str, ModelError | None]:
    exc = task.exception()
    if exc is None:
        return "complete", None
    if isinstance(exc, ModelError):
        return "error", exc
    if isinstance(exc, redis.RedisError | OSError):
        raise exc  # infrastructure: leave the request pending, it will be resumed
    log.error("model failed", exc_info=exc)
    return "error", ModelError("AGENT_ERROR", "the agent failed")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CancelWatch:
    """Which answers of this process were asked to stop: the cancel keys of every answer being
    streamed are checked together, one pipeline of `EXISTS` every `CANCEL_POLL` seconds (not a
    command per answer and poll: at 200 answers that was 1,000 commands a second). Keys are
    checked one command each, so a Redis Cluster pipeline routes every one to its slot."""

    def __init__(self, client: RedisClient) -> None:
        self._redis = client
        self._watched: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, message_id: str) -> asyncio.Future[None]:
        """A future resolved once the answer's cancel key is seen (within `CANCEL_POLL`)."""
        cancelled = asyncio.get_running_loop().create_future()
        self._watched[message_id] = cancelled
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        return cancelled

    def unwatch(self, message_id: str) -> None:
        cancelled = self._watched.pop(message_id, None)
        if cancelled is not None:
            cancelled.cancel()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _poll(self) -> None:
        try:
            while self._watched:
                await asyncio.sleep(CANCEL_POLL)
                ids = list(self._watched)
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for message_id in ids:
                            pipe.exists(keys.chat_cancel(message_id))
                        found: list[Any] = await pipe.execute()
                except (redis.RedisError, OSError) as exc:
                    raise_if_cancelling(exc)
                    log.warning("checking for cancels failed", extra={"error": repr(exc)})
                    continue
                for message_id, exists in zip(ids, found, strict=True):
                    cancelled = self._watched.get(message_id)
                    if exists and cancelled is not None and not cancelled.done():
                        cancelled.set_result(None)
        finally:
            self._task = None


class WorkerPool:
    """`AGENT_WORKERS` workers and the scheduled-notification poller, as an async context: the
    tasks stop and the clients close on exit (an answer in flight is left pending, and another
    worker continues it)."""

    def __init__(
        self,
        settings: Settings,
        db: asyncpg.Pool,
        client: RedisClient,
        *,
        registry: ToolRegistry | None = None,
        model: Model | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = client
        self.registry = registry or build_registry(settings)
        self.model = model or create_model(settings, self.registry)
        self.http = httpx.AsyncClient(timeout=settings.upstream_timeout)
        self.lock_ms = session_lock.ttl_ms(settings)
        self.request_key = chat_wire.request_key(settings.internal_token)
        self.replies = ReplyWriter(client)
        self.cancels = CancelWatch(client)
        self.tokens = DailyTokens(client, settings.chat_daily_token_budget)
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[str] = []

    def lock(self, request: ChatRequest) -> SessionLock:
        """The session lock `request`'s answer holds (the gateway took it when queueing)."""
        return SessionLock(request.session_id, request.message_id, self.lock_ms)

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the workers and the poller (after a first heartbeat)."""
        workers = [Worker(self, index) for index in range(self.settings.agent_workers)]
        self._consumers = [worker.consumer for worker in workers]
        try:
            await ensure_group(self.redis)
            if workers:
                # The gateway takes questions only while a worker's heartbeat is fresh: beat
                # once before the service says it is ready, or its first questions after
                # start-up are refused (503 CHAT_UNAVAILABLE) until each worker's loop has run.
                now = time.time()
                await self.redis.zadd(keys.CHAT_WORKERS, dict.fromkeys(self._consumers, now))
        except (redis.RedisError, OSError) as exc:
            # Start anyway (readyz reports Redis down); workers recreate the group on NOGROUP.
            log.warning("could not create the chat consumer group", extra={"error": repr(exc)})
        for worker in workers:
            self._tasks.append(asyncio.create_task(worker.run()))
        if self.settings.agent_workers:
            self._tasks.append(
                asyncio.create_task(scheduler.run(self.redis, self.http, self.settings))
            )
            self._tasks.append(asyncio.create_task(self._prune_consumers()))
        log.info(
            "chat workers started",
            extra={"workers": self.settings.agent_workers, "model": self.model.name},
        )

    async def _prune_consumers(self) -> None:
        """Every few minutes, forget consumers of stopped processes: no pending request (a
        live worker reclaimed it) and idle for an hour; likewise their heartbeats."""
        while True:
            await asyncio.sleep(CONSUMER_PRUNE_INTERVAL)
            try:
                await consumer_group.prune_consumers(
                    self.redis,
                    keys.CHAT_REQUESTS_STREAM,
                    keys.CHAT_REQUESTS_GROUP,
                    CONSUMER_MAX_IDLE_MS,
                )
                await self.redis.zremrangebyscore(
                    keys.CHAT_WORKERS, "-inf", time.time() - CONSUMER_MAX_IDLE_MS / 1000
                )
            except (redis.RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                log.warning("consumer pruning failed", extra={"error": repr(exc)})

    async def stop(self) -> None:
        """Stop the tasks (an answer in flight stays pending for another worker) and close the
        clients."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=10)
            if stuck:
                log.error("chat worker tasks did not stop", extra={"tasks": len(stuck)})
        self._tasks.clear()
        await self.replies.aclose()
        await self.cancels.aclose()
        if self._consumers:
            with contextlib.suppress(redis.RedisError, OSError):
                await self.redis.zrem(keys.CHAT_WORKERS, *self._consumers)  # gone: say so now
            self._consumers.clear()
        await self.http.aclose()
        await self.model.aclose()


def redis_pool_size(settings: Settings) -> int:
    """Redis connections an agent process may open: each worker can hold one in a blocking
    stream read and one for a command, on top of the HTTP API's share (redis-py's default cap of
    100 would make the 50th worker fail with MaxConnectionsError)."""
    return 100 + 2 * settings.agent_workers


async def _main(settings: Settings) -> None:
    from shared.resources import database_and_redis

    started = database_and_redis(settings, redis_max_connections=redis_pool_size(settings))
    async with started as resources:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        workers = WorkerPool(settings, resources.pool, resources.redis)
        await workers.start()
        resources.stopping.append(("chat workers", workers.stop))
        await stop.wait()


def main() -> None:
    from shared import log as logsetup
    from shared.settings import load_or_exit

    settings = load_or_exit()
    logsetup.configure("agent_worker", settings.log_level, settings.secrets())
    with contextlib.suppress(KeyboardInterrupt):
        _run_loop(_main(settings))


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop, as uvicorn runs agent_svc's API (the standard asyncio loop costs
    the workers about a fifth more CPU per streamed answer); plain asyncio where uvloop is not
    installed (uvicorn[standard] leaves it out on Windows)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


if __name__ == "__main__":
    main()
