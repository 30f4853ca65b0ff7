"""Fixtures for gateway tests: a cluster of two real gateway processes sharing Redis, in front of
real notifications_svc and agent_svc processes, and a small WebSocket client toolkit."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.agent_svc.stack import ChatStack
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService
from tests.support import fake_anthropic as fa
from tests.support.processes import ServiceProcess

INTERNAL = {"authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}

# The two ways a gateway reads an established WebSocket, as the environment that selects them:
# its own protocol serving the adopted connection (the default), and the ASGI receive path.
WS_PATHS = {"owned": {}, "asgi": {"WS_OWNED_PROTOCOL": "false"}}


@dataclass
class Cluster:
    a: ServiceProcess
    b: ServiceProcess
    notifications: ServiceProcess
    agent: ServiceProcess

    @property
    def upstream_env(self) -> dict[str, str]:
        return {"NOTIFICATIONS_URL": self.notifications.url, "AGENT_URL": self.agent.url}


@pytest.fixture(scope="session")
def cluster(spawn_service: SpawnService) -> Cluster:
    """Two gateways (heartbeat 1 s) sharing the session's Redis, with both internal services."""
    notifications = spawn_service("notifications_svc")
    agent = spawn_service("agent_svc", AGENT_WORKERS="0")
    upstream = {"NOTIFICATIONS_URL": notifications.url, "AGENT_URL": agent.url}
    a = spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **upstream)
    b = spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **upstream)
    return Cluster(a=a, b=b, notifications=notifications, agent=agent)


@pytest.fixture(scope="module", params=sorted(WS_PATHS))
def ws_path(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of one WebSocket read path: gateways spawned with it run the requesting
    module's tests on both paths."""
    env: dict[str, str] = WS_PATHS[request.param]
    return env


@pytest.fixture(scope="module")
def gateway(
    cluster: Cluster, ws_path: dict[str, str], spawn_service: SpawnService
) -> ServiceProcess:
    """A gateway like the cluster's (heartbeat 1 s), on each WebSocket read path in turn."""
    if not ws_path:
        return cluster.a
    return spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **ws_path, **cluster.upstream_env)


def ws_url(gateway: ServiceProcess, session_id: uuid.UUID | str, **query: object) -> str:
    url = f"{gateway.ws_url}/api/v1/ws/{session_id}"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


async def open_ws(
    gateway: ServiceProcess,
    session_id: uuid.UUID | str,
    token: str | None,
    *,
    greet: bool = True,
    **kwargs: Any,
) -> ClientConnection:
    """Connect with `?token=` (the seed's way) and, by default, read `connection_established`."""
    query = {"token": token} if token is not None else {}
    query |= kwargs.pop("query", {})
    ws = await connect(ws_url(gateway, session_id, **query), compression=None, **kwargs)
    if greet:
        frame = await recv_json(ws)
        assert frame["type"] == "connection_established", frame
    return ws


async def recv_json(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str), raw
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5
) -> dict[str, Any]:
    """The first frame matching `predicate` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout)
            if predicate(frame):
                return frame


async def closed_with(ws: ClientConnection, timeout: float = 5) -> tuple[int, str]:
    """Read until the server closes; the close code and reason."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "connection dropped without a close frame"
        return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("unreachable")


async def silent(ws: ClientConnection, timeout: float = 0.3) -> bool:
    """True if nothing arrives within `timeout`."""
    try:
        await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        return True
    return False


async def publish(gateway: ServiceProcess, **body: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            gateway.url + "/internal/v1/publish", json=body, headers=INTERNAL, timeout=5
        )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5) -> None:
    """Poll `check` until it is true; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def equals(awaitable: Awaitable[object], expected: object) -> bool:
    return await awaitable == expected


@pytest.fixture
def fake(stack: ChatStack) -> fa.FakeAnthropic:
    """The fake Anthropic server behind the requesting module's chat `stack`."""
    assert stack.fake is not None
    return stack.fake


async def counter(client: httpx.AsyncClient, gateway: ServiceProcess, name: str) -> float:
    """The gateway's counter `name` (its Prometheus sample)."""
    metrics = (await client.get(gateway.url + "/metrics")).text
    sample = next(line for line in metrics.splitlines() if line.startswith(name + " "))
    return float(sample.split()[-1])
