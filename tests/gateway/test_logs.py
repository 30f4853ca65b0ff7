"""A real gateway's logs (DEBUG: uvicorn's access log and WebSocket handshake lines on) never
hold a WebSocket or stream query string, however the token parameter is spelled; at INFO the
per-handshake line is sampled (one in 1000) unless WS_LOG_HANDSHAKES asks for every one."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import SpawnService
from tests.gateway.conftest import Cluster
from tests.support.processes import ServiceProcess

# Plain, percent-encoded (one letter, all letters), double-encoded, upper case, and a parameter
# that is not a token at all: the whole query is dropped, not only what looks like a token.
SPELLINGS = ("token", "%74oken", "t%6Fken", "%74%6F%6B%65%6E", "%2574oken", "TOKEN", "other")


@pytest.fixture(scope="module")
def debug_gateway(spawn_service: SpawnService, cluster: Cluster) -> ServiceProcess:
    return spawn_service("gateway", LOG_LEVEL="DEBUG", **cluster.upstream_env)


async def test_no_query_string_reaches_the_log(debug_gateway: ServiceProcess) -> None:
    """Handshakes and stream requests carrying opaque secrets in every spelling of the token
    parameter leave only their paths in the log (the lines are there, the queries are not)."""
    secrets = {name: f"opaque-{uuid.uuid4().hex}" for name in SPELLINGS}
    for name, secret in secrets.items():
        session = uuid.uuid4()
        url = f"{debug_gateway.ws_url}/api/v1/ws/{session}?{name}={secret}&last_seq=0"
        async with connect(url, compression=None) as ws:
            # Refused after accepting (no valid token); uvicorn logged the handshake before it
            # answered it, so the line is in the file by now.
            await ws.wait_closed()
    async with httpx.AsyncClient(base_url=debug_gateway.url) as http:
        for name, secret in secrets.items():
            await http.get(f"/api/v1/chat/stream/{uuid.uuid4()}?{name}={secret}")
    log = debug_gateway.log(tail=100_000)
    for secret in secrets.values():
        assert secret not in log
    assert log.count('"WebSocket /api/v1/ws/') >= len(SPELLINGS)
    assert log.count("?[query dropped]") >= 2 * len(SPELLINGS)


async def _refused_handshakes(gateway: ServiceProcess, count: int) -> None:
    """`count` handshakes without a token: each is accepted, then closed with 1008."""
    for _ in range(count):
        async with connect(f"{gateway.ws_url}/api/v1/ws/{uuid.uuid4()}", compression=None) as ws:
            await ws.wait_closed()


def _handshake_lines(gateway: ServiceProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in gateway.log(tail=100_000).splitlines() if line]
    return [line for line in lines if '"WebSocket /api/v1/ws/' in str(line.get("msg"))]


async def test_handshake_lines_are_sampled_at_info_and_counted(
    spawn_service: SpawnService, cluster: Cluster
) -> None:
    """At INFO, of three handshakes only the first is logged, marked `sampled`; the metric
    counts all three."""
    gateway = spawn_service("gateway", LOG_LEVEL="INFO", **cluster.upstream_env)
    await _refused_handshakes(gateway, 3)
    lines = _handshake_lines(gateway)
    assert len(lines) == 1
    assert lines[0]["sampled"] == 1000
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        metrics = (await http.get("/metrics")).text
    assert "gateway_ws_handshakes_total 3.0" in metrics.splitlines()


async def test_ws_log_handshakes_logs_every_handshake(
    spawn_service: SpawnService, cluster: Cluster
) -> None:
    """With WS_LOG_HANDSHAKES=true every handshake has its line, none marked `sampled`."""
    gateway = spawn_service(
        "gateway", LOG_LEVEL="INFO", WS_LOG_HANDSHAKES="true", **cluster.upstream_env
    )
    await _refused_handshakes(gateway, 3)
    lines = _handshake_lines(gateway)
    assert len(lines) == 3
    assert not [line for line in lines if "sampled" in line]


async def test_an_accepted_handshake_writes_no_other_line_at_info(
    spawn_service: SpawnService, cluster: Cluster
) -> None:
    """At INFO, with every handshake line asked for, three handshakes write three handshake
    lines and none of the "connection open" lines `websockets` logs for each connect."""
    gateway = spawn_service(
        "gateway", LOG_LEVEL="INFO", WS_LOG_HANDSHAKES="true", **cluster.upstream_env
    )
    await _refused_handshakes(gateway, 3)
    lines = [json.loads(line) for line in gateway.log(tail=100_000).splitlines() if line]
    assert len(_handshake_lines(gateway)) == 3
    assert [line for line in lines if line.get("msg") == "connection open"] == []
