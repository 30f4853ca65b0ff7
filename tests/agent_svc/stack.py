"""A chat stack of real processes for tests: a private Redis, the fake Anthropic server, agent_svc
and a gateway, plus a small SSE client.

The stack has its own Redis so that agent processes other tests start never take its chat
requests (every agent consumes `chat:requests` of the Redis it is given).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared.infra import EmbeddedRedis
from tests.conftest import SpawnService
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.processes import ServiceProcess

STACK_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-test-fake-key",
    "AGENT_RECLAIM_IDLE": "1",
    "ANTHROPIC_TIMEOUT": "1",
    "SSE_KEEPALIVE_INTERVAL": "0.5",
}


@dataclass
class ChatStack:
    redis: EmbeddedRedis
    fake: FakeAnthropic | None
    env: dict[str, str]
    agent: ServiceProcess
    gateway: ServiceProcess
    extra: list[ServiceProcess] = field(default_factory=list)

    def stop(self) -> None:
        ServiceProcess.stop_all((*self.extra, self.gateway, self.agent))
        if self.fake is not None:
            self.fake.stop()
        self.redis.stop()


def start_stack(
    spawn_service: SpawnService,
    root: Path,
    *,
    offline: bool = False,
    notifications: bool = False,
    notifications_database: str = "",
    **env: str,
) -> ChatStack:
    """Start the stack. With `notifications`, also notifications_svc (which the agent's tools
    then use), all on a new database of the PostgreSQL at `notifications_database`."""
    redis = EmbeddedRedis(root / "redis")
    redis.start()
    fake = None if offline else FakeAnthropic().start()
    full_env = {"REDIS_URL": redis.url} | STACK_ENV | env
    if fake is not None:
        full_env["ANTHROPIC_BASE_URL"] = fake.url
    else:
        full_env["ANTHROPIC_API_KEY"] = ""
    extra = []
    if notifications:
        # A database of its own: the session's other notifications_svc processes relay every
        # unpublished row of their database to *their* Redis.
        assert notifications_database, "notifications need the server to create a database on"
        full_env["DATABASE_URL"] = asyncio.run(_create_database(notifications_database))
        extra.append(spawn_service("notifications_svc", **full_env))
        full_env["NOTIFICATIONS_URL"] = extra[0].url
    agent = spawn_service("agent_svc", **full_env)
    gateway = spawn_service("gateway", AGENT_URL=agent.url, **full_env)
    return ChatStack(redis, fake, full_env, agent, gateway, extra)


async def _create_database(url: str) -> str:
    name = f"chat_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


@dataclass
class SseEvent:
    data: dict[str, Any]
    id: str | None = None

    @property
    def type(self) -> str:
        return str(self.data["type"])


ANSWER_DEADLINE = 60.0  # seconds `ask` waits for a whole answer


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent | str]:
    """Events of an SSE body; comments come out as their text (e.g. `keep-alive`)."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(json.loads("\n".join(data)), event_id)
            event_id, data = None, []
        elif line.startswith(":"):
            yield line[1:].strip()
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


def ask(
    gateway: ServiceProcess,
    token: str,
    message: str,
    session_id: uuid.UUID | None = None,
    *,
    stop_after_tokens: int | None = None,
) -> tuple[httpx.Response, list[SseEvent]]:
    """POST /api/v1/chat/stream and read its events to the end (or until `stop_after_tokens`
    tokens, then disconnect). Non-200 answers come back with no events."""
    body: dict[str, Any] = {"message": message}
    if session_id is not None:
        body["session_id"] = str(session_id)
    events: list[SseEvent] = []
    with httpx.stream(
        "POST",
        gateway.url + "/api/v1/chat/stream",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    ) as response:
        if response.status_code != 200:
            response.read()
            return response, events
        tokens = 0
        deadline = time.monotonic() + ANSWER_DEADLINE
        for item in parse_sse(response.iter_lines()):
            # Keep-alive comments keep the read timeout from firing: without a deadline of its
            # own, an answer that never ends would hang the test (and its executor thread).
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end of the answer within {ANSWER_DEADLINE} s")
            if isinstance(item, str):
                continue
            events.append(item)
            tokens += item.type == "token"
            if stop_after_tokens is not None and tokens >= stop_after_tokens:
                break
    return response, events


def resume(
    gateway: ServiceProcess, token: str, message_id: str, last_event_id: str | None
) -> tuple[httpx.Response, list[SseEvent]]:
    """GET /api/v1/chat/stream/{message_id} with Last-Event-ID, read to the end."""
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with httpx.stream(
        "GET", f"{gateway.url}/api/v1/chat/stream/{message_id}", headers=headers, timeout=20
    ) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        events = [e for e in parse_sse(response.iter_lines()) if isinstance(e, SseEvent)]
    return response, events


def text_of(events: list[SseEvent]) -> str:
    return "".join(e.data["content"] for e in events if e.type == "token")


def stack_fixture(
    folder: str, *, offline: bool = False, notifications: bool = False, **env: str
) -> Callable[..., Iterator[ChatStack]]:
    """A module-scoped `stack` fixture (the one copy every chat test module uses): `start_stack`
    under a fresh directory named after `folder`, stopped when the module's tests are done. With
    `notifications`, notifications_svc gets a database of its own on the session's PostgreSQL."""

    @pytest.fixture(scope="module")
    def stack(
        spawn_service: SpawnService,
        tmp_path_factory: pytest.TempPathFactory,
        base_env: dict[str, str],
    ) -> Iterator[ChatStack]:
        chat = start_stack(
            spawn_service,
            tmp_path_factory.mktemp(folder),
            offline=offline,
            notifications=notifications,
            notifications_database=base_env["DATABASE_URL"] if notifications else "",
            **env,
        )
        try:
            yield chat
        finally:
            chat.stop()

    return stack
