"""The public REST facade: forwarded as is, 503 JSON when the upstream is down or slow, and no
path through it reaches `/internal/`."""

from __future__ import annotations

import http.client
import socket
import threading
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from shared.infra import free_port
from tests.conftest import SpawnService
from tests.gateway.conftest import Cluster

Token = Callable[..., str]


def test_notifications_api_forwarded_as_is(cluster: Cluster, token_for: Token) -> None:
    """Status, body and content type through the gateway equal the service's own answer, with
    the client's Authorization forwarded."""
    headers = {"Authorization": f"Bearer {token_for(uuid.uuid4())}"}
    for path in ("/api/v1/notifications?page=1&page_size=5", "/api/v1/notifications/unread/count"):
        direct = httpx.get(cluster.notifications.url + path, headers=headers)
        proxied = httpx.get(cluster.a.url + path, headers=headers)
        assert proxied.status_code == direct.status_code
        assert proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/notifications/../../internal/v1/publish",
        "/api/v1/notifications/%2e%2e/%2e%2e/internal/v1/publish",
        "/api/v1/notifications/./x",
        "/internal/v1/users/00000000-0000-0000-0000-000000000000/notifications/replay",
    ],
)
def test_internal_paths_unreachable(cluster: Cluster, path: str) -> None:
    """Dot segments are refused and `/internal/` of the upstreams is not routed publicly."""
    connection = http.client.HTTPConnection("127.0.0.1", cluster.a.port, timeout=5)
    connection.request("GET", path)  # http.client sends the path exactly as given
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status in {404, 405}, body
    assert b'"error"' in body


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_upstream_slow_or_down_answers_503(
    cluster: Cluster, spawn_service: SpawnService, silent_upstream: int
) -> None:
    """A silent upstream times out after UPSTREAM_TIMEOUT and a closed port fails at once: both
    answer 503 JSON naming the upstream."""
    slow = spawn_service(
        "gateway",
        UPSTREAM_TIMEOUT="1",
        NOTIFICATIONS_URL=f"http://127.0.0.1:{silent_upstream}",
        AGENT_URL=cluster.agent.url,
    )
    down = spawn_service(
        "gateway", NOTIFICATIONS_URL=f"http://127.0.0.1:{free_port()}", AGENT_URL=cluster.agent.url
    )
    for gateway in (slow, down):
        answer = httpx.get(gateway.url + "/api/v1/notifications", timeout=10)
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE"
        assert error["details"] == {"upstream": "notifications"}
