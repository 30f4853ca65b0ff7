"""Fixtures for notifications_svc tests: one shared service process, HTTP helpers, a database
connection for looking under the hood (outbox markers, EXPLAIN)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from shared.settings import Settings
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService
from tests.support.processes import ServiceProcess

INTERNAL = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}


@pytest.fixture(scope="session")
def notifications(spawn_service: SpawnService) -> ServiceProcess:
    """One notifications_svc on the session's PostgreSQL and Redis, shared by the tests."""
    return spawn_service("notifications_svc")


@pytest.fixture
async def http(notifications: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=notifications.url, timeout=30) as client:
        yield client


@pytest.fixture
def database_dsn(settings: Settings) -> str:
    """The database `conn` opens: the session's (a module with a database of its own overrides
    this)."""
    return settings.asyncpg_dsn


@pytest.fixture
async def conn(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_dsn)
    try:
        yield connection
    finally:
        await connection.close()


def payload(user: uuid.UUID, **fields: Any) -> dict[str, Any]:
    """A valid create body for `user`, any field overridable."""
    body: dict[str, Any] = {
        "user_id": str(user),
        "title": "New Task Created",
        "content": "Write the quarterly report",
        "type": "task_created",
        "action": {"type": "open_task", "url": "/tasks/1"},
        "related_entity_type": "task",
        "related_entity_id": str(uuid.uuid4()),
    }
    return body | fields


async def create(
    client: httpx.AsyncClient, user: uuid.UUID, *, status: int = 201, **fields: Any
) -> dict[str, Any]:
    """Create a notification through the internal API and return it."""
    response = await client.post(
        "/internal/v1/notifications", json=payload(user, **fields), headers=INTERNAL
    )
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
def auth(token_for: Callable[..., str]) -> Callable[[uuid.UUID], dict[str, str]]:
    """Authorization headers for a user."""

    def headers(user: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {token_for(user)}"}

    return headers


@pytest.fixture(scope="session")
def push_notifications(spawn_service: SpawnService) -> ServiceProcess:
    """A notifications_svc accepting the stand-in's loopback endpoints, pushing always."""
    return spawn_service("notifications_svc", PUSH_ALLOW_LOOPBACK="true", PUSH_POLICY="always")
