"""Fixtures of the `shared` tests: an asyncio client of the session's real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    """A client of the test session's Redis, closed after the test."""
    connection = redis.Redis.from_url(settings.redis_url)
    yield connection
    await connection.aclose()
