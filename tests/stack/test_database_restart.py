"""notifications_svc and agent_svc while PostgreSQL restarts under load: every answer is a 2xx or
the documented 503, never a 500, and nothing in the log reads as a bug (no traceback, no ERROR)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from shared.infra import EmbeddedPostgres
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService

INTERNAL = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
RESTARTS = 3
CLIENTS = 8  # concurrent request loops: enough for requests to be in flight at every restart


@dataclass
class Seen:
    """Every answer's status, and the 503 bodies' error codes."""

    statuses: Counter[int] = field(default_factory=Counter)
    unavailable_codes: set[str] = field(default_factory=set)
    successes: int = 0


Call = tuple[str, str, dict[str, Any]]  # method, path, httpx keyword arguments


def _requests(module: str, user: uuid.UUID, token: str) -> list[Call]:
    """A create and a list of the service's API, alternated by each request loop."""
    bearer = {"Authorization": f"Bearer {token}"}
    if module == "notifications_svc":
        body = {"user_id": str(user), "title": "t", "content": "c", "type": "test"}
        return [
            ("POST", "/internal/v1/notifications", {"json": body, "headers": INTERNAL}),
            ("GET", "/api/v1/notifications", {"headers": bearer}),
        ]
    return [
        ("POST", "/api/v1/sessions", {"json": {"title": "t"}, "headers": bearer}),
        ("GET", "/api/v1/sessions", {"headers": bearer}),
    ]


async def _load(
    http: httpx.AsyncClient, calls: list[Call], seen: Seen, stop: asyncio.Event
) -> None:
    index = 0
    while not stop.is_set():
        method, path, kwargs = calls[index % len(calls)]
        response = await http.request(method, path, **kwargs)
        index += 1
        seen.statuses[response.status_code] += 1
        if response.status_code == 503:
            seen.unavailable_codes.add(response.json()["error"]["code"])
        elif response.is_success:
            seen.successes += 1


async def _successes_after(seen: Seen, count: int, timeout: float = 20) -> None:
    """Wait (polling with a deadline) until `count` more requests succeeded."""
    target = seen.successes + count
    deadline = time.monotonic() + timeout
    while seen.successes < target:
        assert time.monotonic() < deadline, f"no recovery: {dict(seen.statuses)}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("module", ["notifications_svc", "agent_svc"])
async def test_postgres_restarts_under_load_answer_only_2xx_or_503(
    module: str,
    spawn_service: SpawnService,
    private_postgres: EmbeddedPostgres,
    token_for: Callable[..., str],
) -> None:
    """Concurrent creates and lists while PostgreSQL is fast-restarted three times: only 2xx and
    503 SERVICE_UNAVAILABLE; the service recovers after each restart by itself; its log holds no
    traceback, no ERROR line and no raw asyncpg pool-floor warning."""
    service = await asyncio.to_thread(
        spawn_service,
        module,
        DATABASE_URL=private_postgres.url,
        AGENT_WORKERS="0",
        # The load creates sessions far faster than a user may (60 an hour by default).
        CHAT_MAX_NEW_SESSIONS_PER_HOUR="1000000",
    )
    user = uuid.uuid4()
    requests = _requests(module, user, token_for(user))
    seen, stop = Seen(), asyncio.Event()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        loops = [asyncio.create_task(_load(http, requests, seen, stop)) for _ in range(CLIENTS)]
        try:
            await _successes_after(seen, 20)
            for _ in range(RESTARTS):
                # What `pg_ctl -m fast restart` does: fast shutdown, then start on the same data.
                await asyncio.to_thread(private_postgres.stop)
                await asyncio.to_thread(private_postgres.start)
                await _successes_after(seen, 20)
        finally:
            stop.set()
            await asyncio.gather(*loops)
    await asyncio.to_thread(service.stop)

    assert {s for s in seen.statuses if not 200 <= s < 300} <= {503}, dict(seen.statuses)
    assert seen.statuses[503] > 0, "no request met the outage"
    assert seen.unavailable_codes == {"SERVICE_UNAVAILABLE"}
    alarming = [
        line
        for line in service.log(tail=100_000).splitlines()
        if "Traceback" in line
        or '"level": "ERROR"' in line
        or "Failed to restore the pool connection floor" in line
    ]
    assert alarming == []
