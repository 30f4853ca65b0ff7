"""Every service: /healthz while alive, /readyz 200 with its dependencies, 503 naming one down."""

from __future__ import annotations

import time

import httpx
import pytest

from shared.infra import EmbeddedRedis
from tests.conftest import SpawnService

SERVICES = {
    "gateway": ["redis"],
    "notifications_svc": ["postgres", "redis"],
    "agent_svc": ["postgres", "redis"],
}


def _wait_status(url: str, status: int, timeout: float = 15) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url, timeout=5)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_readyz_follows_redis(
    module: str, spawn_service: SpawnService, private_redis: EmbeddedRedis
) -> None:
    """/readyz is 200 with every dependency up, 503 naming redis when it stops, 200 after."""
    service = spawn_service(module, REDIS_URL=private_redis.url)
    assert httpx.get(service.url + "/healthz").json() == {"status": "alive"}
    ready = httpx.get(service.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {name: "ok" for name in SERVICES[module]}

    private_redis.stop()
    down = _wait_status(service.url + "/readyz", 503)
    assert down.status_code == 503
    assert down.json()["error"]["details"]["down"] == ["redis"]
    assert httpx.get(service.url + "/healthz").status_code == 200

    private_redis.start()
    assert _wait_status(service.url + "/readyz", 200).status_code == 200


def test_unknown_route_answers_json_404(spawn_service: SpawnService) -> None:
    """A path no route serves gets the JSON error body, not HTML."""
    service = spawn_service("notifications_svc")
    response = httpx.get(service.url + "/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_sigterm_runs_shutdown_and_exits_0(module: str, spawn_service: SpawnService) -> None:
    """SIGTERM runs the lifespan shutdown to completion and the process then exits with status 0
    (uvicorn alone would re-raise the signal: status -15, which reads as a crash)."""
    service = spawn_service(module)
    assert service.stop(timeout=15) == 0, service.log()
    assert "Application shutdown complete" in service.log()
