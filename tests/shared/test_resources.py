"""`shared.resources.database_and_redis` on the real PostgreSQL and Redis: the service's own
shutdown steps run first and in order, then Redis and the pool close; a step that never returns
is named in the log and the context still exits within the budget."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared import shutdown
from shared.resources import database_and_redis
from shared.settings import Settings


async def test_the_services_steps_run_first_then_redis_and_the_pool_close(
    settings: Settings,
) -> None:
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def second() -> None:
        ran.append("second")

    async with database_and_redis(settings) as resources:
        assert await resources.pool.fetchval("SELECT 1") == 1
        assert await resources.redis.ping()
        resources.stopping += [("first", first), ("second", second)]
    assert ran == ["first", "second"]
    assert resources.pool.is_closing()


async def test_a_step_that_hangs_is_named_and_the_context_exits_within_the_budget(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the overrun left (here the pool and the client) is left to the process's exit."""
    monkeypatch.setattr(shutdown, "SHUTDOWN_TIMEOUT", 0.5)
    never = asyncio.Event()

    async def hang() -> None:
        await never.wait()

    with caplog.at_level(logging.WARNING, logger="shared.shutdown"):
        async with database_and_redis(settings) as resources:
            resources.stopping.append(("stuck background task", hang))
    (record,) = [r for r in caplog.records if r.getMessage() == "shutdown overran"]
    assert record.__dict__["step"] == "stuck background task"
    assert not resources.pool.is_closing()  # the budget ran out in the service's own step
    await resources.redis.aclose()
    await resources.pool.close()
