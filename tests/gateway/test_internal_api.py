"""The gateway's internal API: publish validation, and the connection manager's cluster-wide
queries (is a session connected, how many connections, which sessions are active)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx

from tests.gateway.conftest import INTERNAL, Cluster, eventually, open_ws
from tests.gateway.conftest import publish as publish_http

Token = Callable[..., str]


async def _get(url: str) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        response = await client.get(url, headers=INTERNAL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def test_connection_queries_span_instances(cluster: Cluster, token_for: Token) -> None:
    """Connections on gateway A are seen through gateway B, and vanish once closed."""
    session = uuid.uuid4()
    token = token_for(uuid.uuid4())
    sockets = [await open_ws(cluster.a, session, token), await open_ws(cluster.b, session, token)]
    url = f"{cluster.b.url}/internal/v1/sessions/{session}/connections"
    assert await _get(url) == {"session_id": str(session), "connected": True, "connections": 2}
    overview = await _get(cluster.b.url + "/internal/v1/connections")
    assert str(session) in overview["active_sessions"]  # type: ignore[operator]
    assert overview["connections"] >= 2  # type: ignore[operator]
    for ws in sockets:
        await ws.close()

    async def disconnected() -> bool:
        return (await _get(url))["connected"] is False

    await eventually(disconnected)
    assert (await _get(url))["connections"] == 0


async def test_publish_endpoint_validation(cluster: Cluster) -> None:
    """The publish endpoint needs the internal token and exactly one target."""
    async with httpx.AsyncClient() as client:
        url = cluster.a.url + "/internal/v1/publish"
        unauthorized = await client.post(url, json={"broadcast": True, "frame": {"type": "x"}})
        assert unauthorized.status_code == 401
    two_targets = await publish_http(
        cluster.a, broadcast=True, user_id=str(uuid.uuid4()), frame={"type": "x"}
    )
    assert two_targets.status_code == 422
    no_type = await publish_http(cluster.a, broadcast=True, frame={"kind": "x"})
    assert no_type.status_code == 422
    assert json.loads(no_type.text)["error"]["code"] == "VALIDATION_ERROR"
