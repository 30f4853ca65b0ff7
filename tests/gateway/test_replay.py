"""The replay client with the real notifications_svc: the resumes and seq baselines of connections
being set up at the same time are served by one batch call, and every client still gets exactly
what it missed, then the live notifications."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.replay import MAX_ASKS, ROWS_PER_CALL, Page, ReplayClient, ReplayError
from gateway.upstream import Upstream
from shared.infra import free_port
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService
from tests.gateway.conftest import (
    INTERNAL,
    Cluster,
    counter,
    equals,
    eventually,
    open_ws,
    recv_json,
)
from tests.gateway.test_manager import collect
from tests.support.processes import ServiceProcess

Token = Callable[..., str]
RESUMES = 30
FRESH = 5


class Pausable:
    """A notifications_svc that can be stopped (SIGSTOP) and continued: calls to it wait."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        assert service.process is not None
        self.pid = service.process.pid

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def notifications(spawn_service: SpawnService) -> Iterator[Pausable]:
    pausable = Pausable(spawn_service("notifications_svc"))
    yield pausable
    pausable.resume()


@pytest.fixture(scope="module")
def gateway(
    spawn_service: SpawnService, cluster: Cluster, notifications: Pausable
) -> ServiceProcess:
    """A gateway whose replays go to the pausable notifications_svc (and wait for it)."""
    return spawn_service(
        "gateway",
        WS_HEARTBEAT_INTERVAL="1",
        NOTIFICATIONS_URL=notifications.service.url,
        AGENT_URL=cluster.agent.url,
        UPSTREAM_TIMEOUT="120",
    )


async def test_connections_set_up_together_share_one_replay_call(
    cluster: Cluster, notifications: Pausable, gateway: ServiceProcess, token_for: Token
) -> None:
    """Resumes (each user with a different history and `last_seq`) and fresh connections of users
    without notifications, set up while notifications_svc is busy, are answered by one call
    once it answers: each resumed client gets exactly the seqs after its `last_seq`, in order,
    and every client then gets a new notification live, once."""
    users = [uuid.uuid4() for _ in range(RESUMES)]
    items = [
        {"user_id": str(u), "title": f"{n}-{k}", "content": "c", "type": "test"}
        for n, u in enumerate(users)
        for k in range(2 + n % 3)
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(
            cluster.notifications.url + "/internal/v1/notifications/batch",
            json={"notifications": items},
            headers=INTERNAL,
        )
        assert created.status_code == 201, created.text
        seqs: dict[str, list[int]] = {}
        for item in created.json()["items"]:
            seqs.setdefault(item["notification"]["user_id"], []).append(item["notification"]["seq"])
        resume_from = {u: n % 2 for n, u in enumerate(users)}
        asks = await counter(client, gateway, "gateway_replay_asks_total")
        calls = await counter(client, gateway, "gateway_replay_calls_total")

        notifications.pause()
        try:
            resumed = await asyncio.gather(
                *(
                    open_ws(gateway, uuid.uuid4(), token_for(u), query={"last_seq": resume_from[u]})
                    for u in users
                )
            )
            newcomers = [uuid.uuid4() for _ in range(FRESH)]
            fresh = await asyncio.gather(
                *(open_ws(gateway, uuid.uuid4(), token_for(u), greet=False) for u in newcomers)
            )
            total = asks + RESUMES + FRESH
            await eventually(
                lambda: equals(counter(client, gateway, "gateway_replay_asks_total"), total), 30
            )
        finally:
            notifications.resume()

        for user, ws in zip(users, resumed, strict=True):
            missed = [s for s in seqs[str(user)] if s > resume_from[user]]
            assert await collect(ws, missed[-1]) == missed
        for ws in fresh:
            assert (await recv_json(ws, 30))["type"] == "connection_established"
        # The first call took what was asked before the pause took effect; every ask made while
        # it waited went into the next one.
        assert await counter(client, gateway, "gateway_replay_calls_total") - calls <= 2

        live: dict[uuid.UUID, int] = {}
        for user in [*users, *newcomers]:
            response = await client.post(
                cluster.notifications.url + "/internal/v1/notifications",
                json={"user_id": str(user), "title": "live", "content": "c", "type": "test"},
                headers=INTERNAL,
            )
            assert response.status_code == 201, response.text
            live[user] = response.json()["seq"]
    for user, ws in zip([*users, *newcomers], [*resumed, *fresh], strict=True):
        assert await collect(ws, live[user]) == [live[user]]
        await ws.close()


class Tasks:
    """The owner of a `ReplayClient`'s background calls, as the manager is in the gateway."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.running.add(task)
        task.add_done_callback(self.running.discard)


def calls_made() -> float:
    """This process's `gateway_replay_calls_total`."""
    value = REGISTRY.get_sample_value("gateway_replay_calls_total")
    assert value is not None
    return value


@pytest.fixture
async def replay_client(notifications: Pausable) -> AsyncIterator[ReplayClient]:
    """A `ReplayClient` in this process, talking to the real notifications_svc."""
    http = Upstream(notifications.service.url, timeout=30)
    try:
        yield ReplayClient(http, TEST_INTERNAL_TOKEN, Tasks().spawn)
    finally:
        await http.aclose()


async def test_a_large_batch_is_split_into_bounded_calls(
    cluster: Cluster, replay_client: ReplayClient
) -> None:
    """Pages asked for in the same event-loop turn beyond `MAX_ASKS` go out in several calls of
    at most `MAX_ASKS` asks, each of whose pages is at most `ROWS_PER_CALL / MAX_ASKS` long
    (`has_more` then says there is more); every asker gets its own user's page."""
    users = [uuid.uuid4() for _ in range(2 * MAX_ASKS + 10)]
    deep = users[0]
    per_ask = ROWS_PER_CALL // MAX_ASKS
    items = [{"user_id": str(deep), "title": "t", "content": "c", "type": "test"}] * (per_ask + 5)
    items += [
        {"user_id": str(u), "title": str(u), "content": "c", "type": "test"} for u in users[1:]
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        for start in range(0, len(items), 500):
            created = await client.post(
                cluster.notifications.url + "/internal/v1/notifications/batch",
                json={"notifications": items[start : start + 500]},
                headers=INTERNAL,
            )
            assert created.status_code == 201, created.text
    calls = calls_made()
    pages = await asyncio.gather(*(replay_client.page(u, 0) for u in users))
    assert calls_made() - calls == 3
    assert [seq for seq, _ in pages[0].frames] == list(range(1, per_ask + 1))
    assert (pages[0].has_more, pages[0].last_seq) == (True, per_ask + 5)
    for user, page in zip(users[1:], pages[1:], strict=True):
        assert [(seq, json.loads(text)["data"]["title"]) for seq, text in page.frames] == [
            (1, str(user))
        ]
        assert (page.has_more, page.last_seq) == (False, 1)


async def test_a_failed_call_fails_each_of_its_askers() -> None:
    """When notifications_svc cannot be reached, every page asked for in the batch raises
    `ReplayError` (the gateway then refuses or retries each connection, as before)."""
    http = Upstream(f"http://127.0.0.1:{free_port()}", timeout=5)
    client = ReplayClient(http, TEST_INTERNAL_TOKEN, Tasks().spawn)
    try:
        outcomes = await asyncio.gather(
            *(client.page(uuid.uuid4(), 0) for _ in range(3)), return_exceptions=True
        )
    finally:
        await http.aclose()
    assert [type(o) for o in outcomes] == [ReplayError] * 3


class MisbehavingService:
    """A wire-level stand-in for a notifications_svc that fails in ways the real one cannot be
    made to on demand: each connection gets the next scripted answer, or is closed unanswered
    (None)."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        self.requests += 1
        answer = self.answers.pop(0)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        writer.close()


def http_answer(status: int, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


ONE_PAGE = http_answer(200, b'{"pages": [{"items": [], "has_more": false, "last_seq": 7}]}')


async def ask_one(service: MisbehavingService) -> Page:
    """One page asked of `service` through a `ReplayClient`."""
    server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = Upstream(f"http://127.0.0.1:{port}", timeout=5)
    try:
        return await ReplayClient(http, TEST_INTERNAL_TOKEN, Tasks().spawn).page(uuid.uuid4(), 3)
    finally:
        await http.aclose()
        server.close()
        await server.wait_closed()


async def test_a_connection_closed_before_the_answer_is_asked_again_once() -> None:
    """The batch is a POST, which the pool does not resend; it only reads, so the client sends
    it once more when the connection closed before any answer, and the page arrives."""
    service = MisbehavingService([None, ONE_PAGE])
    page = await ask_one(service)
    assert (page.frames, page.has_more, page.last_seq) == ([], False, 7)
    assert service.requests == 2


@pytest.mark.parametrize(
    "answers",
    [
        [None, None],
        [http_answer(500, b"{}")],
        [http_answer(200, b'{"pages": []}')],
        [http_answer(200, b"not json")],
        [
            http_answer(
                200, b'{"pages": [{"items": [{"data": {}}], "has_more": false, "last_seq": 1}]}'
            )
        ],
    ],
    ids=["closed-twice", "status-500", "page-missing", "not-json", "item-without-seq"],
)
async def test_a_failed_or_malformed_answer_is_a_replay_error(answers: list[bytes | None]) -> None:
    """Closed twice without an answer, an error status, fewer pages than asks, or an answer
    that does not decode: the asker gets `ReplayError`."""
    with pytest.raises(ReplayError):
        await ask_one(MisbehavingService(answers))
