"""agent_svc workers against real processes: malformed requests, a worker killed mid-answer
(last: it kills the stack's agent); the process-wide cancel watch against a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import redis

from agent_svc.worker import CANCEL_POLL, CancelWatch, WorkerPool
from shared import chat_wire, keys, redis_client
from shared.infra import EmbeddedRedis
from shared.settings import Settings
from tests.agent_svc.stack import ChatStack, ask, resume, stack_fixture, text_of
from tests.conftest import TEST_INTERNAL_TOKEN
from tests.support import fake_anthropic as fa

stack = stack_fixture("chat-worker", AGENT_WORKERS="2")


async def test_cancel_watch_sees_only_the_cancelled_answer(settings: Settings) -> None:
    """Of two watched answers, only the one whose cancel key is set is reported, within a poll
    or two; unwatching the other cancels its future."""
    client = redis_client.create_client(settings)
    watch = CancelWatch(client)
    stopped, running = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        first, second = watch.watch(stopped), watch.watch(running)
        await client.set(keys.chat_cancel(stopped), b"1", ex=60)
        await asyncio.wait_for(first, 5 * CANCEL_POLL)
        assert not second.done()
        watch.unwatch(stopped)
        watch.unwatch(running)
        assert second.cancelled()
    finally:
        await watch.aclose()
        await client.delete(keys.chat_cancel(stopped))
        await client.aclose()


async def test_workers_announce_themselves_before_the_service_is_ready(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    """Entering the worker pool (agent_svc's start-up, before its /readyz answers) writes every
    worker's heartbeat: the gateway, which takes questions only while a heartbeat is fresh,
    does not refuse the first questions after a start."""
    local = dataclasses.replace(settings, redis_url=private_redis.url, agent_workers=2)
    client = redis_client.create_client(local)
    db = await asyncpg.create_pool(local.asyncpg_dsn, min_size=0, max_size=1)
    try:
        async with WorkerPool(local, db, client):
            # Read with a blocking client: the event loop does not run in between, so the
            # workers' own loops (which beat too) have not started yet.
            with redis.Redis.from_url(private_redis.url) as reader:
                beats = reader.zrange(keys.CHAT_WORKERS, 0, -1, withscores=True)
            assert len(beats) == 2, beats
            assert all(time.time() - when < 5 for _, when in beats)
    finally:
        await db.close()
        await client.aclose()


def test_malformed_request_is_dropped(stack: ChatStack, token_for: Callable[..., str]) -> None:
    """A request entry that does not decode is acknowledged and dropped; the worker keeps
    answering."""
    assert stack.fake is not None
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        client.xadd(keys.CHAT_REQUESTS_STREAM, {"r": b"{not a request"})
        key = f"after-{uuid.uuid4().hex[:8]}"
        stack.fake.script(key, fa.text("still here"))
        _, events = ask(stack.gateway, token_for(uuid.uuid4()), key)
        assert text_of(events) == "still here", events
        deadline = time.monotonic() + 5
        while client.xpending(keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP)["pending"]:
            assert time.monotonic() < deadline, "a request stayed pending"
            time.sleep(0.05)
        assert client.xlen(keys.CHAT_REQUESTS_STREAM) == 0
    finally:
        client.close()


def test_forged_or_altered_requests_are_dead_lettered(
    stack: ChatStack, token_for: Callable[..., str]
) -> None:
    """Requests written to `chat:requests` by anyone but a gateway — unsigned, signed with
    another key, or signed and then altered (another `user_id`) — are set aside in
    `chat:requests:dead`, never answered (no event in their reply streams), and the worker keeps
    answering signed ones."""
    assert stack.fake is not None
    victim = uuid.uuid4()
    key = chat_wire.request_key(TEST_INTERNAL_TOKEN)

    def request(message_id: str, user: uuid.UUID) -> bytes:
        return chat_wire.encode(
            chat_wire.ChatRequest(
                message_id=message_id,
                user_message_id=str(uuid.uuid4()),
                session_id=str(uuid.uuid4()),
                user_id=str(user),
                message="list my notifications",
                created_at="2026-01-01T00:00:00+00:00",
            )
        )

    forged = {str(uuid.uuid4()): kind for kind in ("unsigned", "other key", "altered")}
    values = []
    for message_id, kind in forged.items():
        if kind == "unsigned":
            values.append(request(message_id, victim))
        elif kind == "other key":
            values.append(chat_wire.sign_request(b"k" * 32, request(message_id, victim)))
        else:  # a gateway's request for someone else, then pointed at the victim
            someone = uuid.uuid4()
            signed = chat_wire.sign_request(key, request(message_id, someone))
            values.append(signed.replace(str(someone).encode(), str(victim).encode()))
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        before = client.xlen(keys.CHAT_REQUESTS_DEAD_LETTER)
        for value in values:
            client.xadd(keys.CHAT_REQUESTS_STREAM, {chat_wire.REQUEST_FIELD: value})
        question = f"signed-{uuid.uuid4().hex[:8]}"
        stack.fake.script(question, fa.text("signed and answered"))
        _, events = ask(stack.gateway, token_for(uuid.uuid4()), question)
        assert text_of(events) == "signed and answered", events
        dead: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(
            keys.CHAT_REQUESTS_DEAD_LETTER
        )[before:]  # type: ignore[index,assignment]
        assert [entry[chat_wire.REQUEST_FIELD] for _, entry in dead] == values
        assert {entry[b"reason"] for _, entry in dead} == {
            b"request is not signed",
            b"request signature does not verify",
        }
        for message_id in forged:
            assert client.xlen(keys.chat_reply_stream(message_id)) == 0
    finally:
        client.close()


def test_request_stream_lost_is_recreated(stack: ChatStack, token_for: Callable[..., str]) -> None:
    """When Redis comes back without its data (the request stream and its group are gone), the
    workers recreate them and answer the next question."""
    assert stack.fake is not None
    stack.redis.stop()
    shutil.rmtree(stack.redis.data_dir)
    stack.redis.start()
    deadline = time.monotonic() + 20
    while httpx.get(stack.gateway.url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not reconnect to Redis"
        time.sleep(0.1)
    # The emptied Redis has no worker heartbeat until the workers' next one: until then the
    # gateway rightly refuses questions with 503 CHAT_UNAVAILABLE.
    client = redis.Redis.from_url(stack.redis.url)
    try:
        while not client.zcount(keys.CHAT_WORKERS, time.time() - 5, "+inf"):
            assert time.monotonic() < deadline, "no worker announced itself again"
            time.sleep(0.1)
    finally:
        client.close()
    key = f"after-loss-{uuid.uuid4().hex[:8]}"
    stack.fake.script(key, fa.text("answered again"))
    _, events = ask(stack.gateway, token_for(uuid.uuid4()), key)
    assert text_of(events) == "answered again", events


def _entry(event_id: str) -> tuple[int, int]:
    milliseconds, sequence = event_id.split("-")
    return int(milliseconds), int(sequence)


def test_workers_answer_sessions_concurrently(
    stack: ChatStack, token_for: Callable[..., str]
) -> None:
    """With two workers, two sessions' answers stream at the same time (each starts before the
    other ends) rather than one after the other."""
    assert stack.fake is not None
    keys_ = [f"par-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for key in keys_:
        stack.fake.script(key, fa.text(*[f"{key} "] * 12, delay=0.1))
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda key: ask(stack.gateway, token_for(uuid.uuid4()), key), keys_)
        )
    spans = []
    for _, events in results:
        tokens = [_entry(e.data["event_id"]) for e in events if e.type == "token"]
        assert len(tokens) == 12 and events[-1].type == "end"
        spans.append((tokens[0], tokens[-1]))
    assert max(first for first, _ in spans) < min(last for _, last in spans)


class StandaloneWorker:
    """`python -m agent_svc.worker`: workers without the HTTP API, ready once they log so."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent_svc.worker"],
                env=env | {"PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while b"chat workers started" not in log_path.read_bytes():
            assert self.process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "standalone worker did not start"
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"worker ignored SIGTERM:\n{self.log_path.read_text()}") from None


async def _stored(settings: Settings, session: uuid.UUID) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT role, content, status FROM chat.messages WHERE session_id = $1 "
            "ORDER BY created_at, id",
            session,
        )
    finally:
        await conn.close()
    return [(r["role"], r["content"], r["status"]) for r in rows]


def test_worker_killed_mid_answer_is_reclaimed_and_finished(
    stack: ChatStack,
    base_env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    token_for: Callable[..., str],
) -> None:
    """SIGKILL the worker mid-answer: a standalone worker (`python -m agent_svc.worker`)
    reclaims the request and continues the answer (the model continues a prefill of what was
    said), so a reader resuming by event id gets the whole answer exactly once, and the stored
    answer is complete."""
    assert stack.fake is not None
    token = token_for(uuid.uuid4())
    key = f"crash-{uuid.uuid4().hex[:8]}"
    chunks = [f"word{i} " for i in range(30)]
    stack.fake.script(key, fa.text(*chunks, delay=0.1))
    session = uuid.uuid4()
    _, first = ask(stack.gateway, token, f"{key} tell me", session, stop_after_tokens=4)
    message_id = first[0].data["message_id"]
    stack.agent.kill()
    successor = StandaloneWorker(base_env | stack.env, tmp_path / "worker.log")
    try:
        response, rest = resume(stack.gateway, token, message_id, first[-1].data["event_id"])
    finally:
        assert successor.stop() == 0  # SIGTERM: a clean stop
    assert response.status_code == 200
    assert rest[-1].type == "end" and rest[-1].data["status"] == "complete"
    assert text_of(first) + text_of(rest) == "".join(chunks)
    requests = stack.fake.requests_for(key)
    assert len(requests) == 2
    prefill = requests[1]["messages"][-1]
    assert prefill["role"] == "assistant"
    assert "".join(chunks).startswith(prefill["content"])
    assert len(prefill["content"]) >= len(text_of(first).rstrip())
    assert asyncio.run(_stored(settings, session)) == [
        ("user", f"{key} tell me", "complete"),
        ("assistant", "".join(chunks), "complete"),
    ]
    log = successor.log_path.read_bytes()
    assert b"reclaimed chat request" in log
    assert b"did not stop" not in log  # every worker task ended when asked
