"""deploy/nginx.conf, live: Debian's nginx running the deployed file in front of real gateways.

REST and health checks reach every gateway through the balancer, what must stay private answers
404 at the edge, oversized bodies and a dead upstream get the API's JSON errors, tokens in query
strings never reach the access log, and a killed gateway's traffic moves to the survivor.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shared.infra import free_port
from tests.conftest import SpawnService
from tests.deploy.conftest import StartNginx
from tests.deploy.nginx import Nginx, upstream_ports
from tests.support.processes import ServiceProcess


@pytest.fixture
def gateways(spawn_service: SpawnService) -> Iterator[list[ServiceProcess]]:
    """Two real gateway processes of this test's own (a test may kill one)."""
    pair = [spawn_service("gateway"), spawn_service("gateway")]
    yield pair
    for gateway in pair:
        gateway.stop()


@pytest.fixture
def proxy(start_nginx: StartNginx, gateways: list[ServiceProcess]) -> Nginx:
    return start_nginx([gateway.port for gateway in gateways])


def test_requests_reach_every_gateway(proxy: Nginx, gateways: list[ServiceProcess]) -> None:
    """Requests through nginx succeed and are spread over both gateways."""
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(8):
            response = client.get("/readyz")
            assert response.status_code == 200
            assert response.json()["status"] == "ready"
    served = upstream_ports(proxy.access_lines("/readyz", at_least=8))
    assert sorted(set(served)) == sorted(gateway.port for gateway in gateways)


@pytest.mark.parametrize("path", ["/internal/v1/publish", "/internal/anything", "/metrics"])
def test_private_paths_answer_404_at_the_edge(proxy: Nginx, path: str) -> None:
    """/internal/ and /metrics answer a JSON 404 from nginx; no gateway is contacted."""
    for method in ("GET", "POST"):
        response = httpx.request(method, proxy.url + path, headers={"Authorization": "Bearer x"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert upstream_ports(proxy.access_lines(path, at_least=2)) == []


def test_oversized_body_gets_json_413(proxy: Nginx) -> None:
    """A body over client_max_body_size is refused by nginx with the API's JSON error shape."""
    response = httpx.post(
        proxy.url + "/api/v1/notifications/read-all",
        content=b"x" * (256 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_query_string_tokens_are_not_logged(proxy: Nginx) -> None:
    """The access log records paths without query strings, so ?token=<JWT> never lands there."""
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-token-material"
    httpx.get(proxy.url + f"/healthz?token={secret}")
    assert proxy.access_lines("/healthz", at_least=1)
    assert secret not in proxy.log()


def test_no_gateway_left_answers_json_503(start_nginx: StartNginx) -> None:
    """With every upstream refusing connections, clients get a JSON 503 with Retry-After."""
    proxy = start_nginx([free_port()])
    response = httpx.get(proxy.url + "/api/v1/notifications")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_killed_gateway_traffic_moves_to_survivor(
    proxy: Nginx, gateways: list[ServiceProcess]
) -> None:
    """After one gateway is killed (SIGKILL), every request still succeeds via the other."""
    dead, survivor = gateways
    dead.kill()
    before = len(proxy.access_lines("/readyz"))
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(6):
            assert client.get("/readyz").status_code == 200, proxy.log()
    served = upstream_ports(proxy.access_lines("/readyz", at_least=before + 6)[before:])
    assert served == [survivor.port] * 6, proxy.log()
