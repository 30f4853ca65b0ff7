"""The service as a whole when PostgreSQL goes away: 503 JSON while it is down, normal service
once it is back, the process alive throughout."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx

from shared.infra import EmbeddedPostgres
from tests.conftest import SpawnService
from tests.notifications_svc.conftest import INTERNAL, payload


def test_database_outage_answers_503_then_recovers(
    spawn_service: SpawnService,
    private_postgres: EmbeddedPostgres,
    token_for: Callable[..., str],
) -> None:
    """With PostgreSQL stopped, create and list answer 503 SERVICE_UNAVAILABLE as JSON; after
    it restarts the same process serves them again."""
    service = spawn_service("notifications_svc", DATABASE_URL=private_postgres.url)
    user = uuid.uuid4()
    headers = {"Authorization": f"Bearer {token_for(user)}"}
    try:
        with httpx.Client(base_url=service.url, timeout=30) as http:

            def create() -> httpx.Response:
                return http.post("/internal/v1/notifications", json=payload(user), headers=INTERNAL)

            assert create().status_code == 201

            private_postgres.stop()
            for response in (create(), http.get("/api/v1/notifications", headers=headers)):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"

            private_postgres.start()
            assert create().json()["seq"] == 2
            listed = http.get("/api/v1/notifications", headers=headers)
            assert listed.json()["total"] == 2
    finally:
        service.stop()
