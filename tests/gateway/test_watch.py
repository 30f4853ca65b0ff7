"""The manager's watch round (idle timeout, token expiry) runs in slices: it pauses after every
`WATCH_SLICE` connections so other connections' work runs in between, and a connection that
ended during a pause is left alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as redis

from gateway import manager as manager_module
from gateway.chat import ChatQuotas
from gateway.manager import ConnectionManager
from gateway.state import GatewayState
from gateway.upstream import Upstream
from shared.auth import TokenVerifier
from shared.quotas import TokenBucket
from shared.settings import Settings
from tests.conftest import Infra

NOW = 1_000.0  # the fake monotonic clock


@dataclass
class Held:
    """What the watch round reads of a connection."""

    conn_id: str
    last_seen: float
    expires_at: float = 4e9
    warned: bool = False
    close_code: int | None = None


@pytest.fixture
async def manager(settings: Settings, infra: Infra) -> AsyncIterator[ConnectionManager]:
    client = redis.Redis.from_url(infra.redis.url)
    nowhere = "http://127.0.0.1:9"  # never called: the manager is not started
    state = GatewayState(
        settings=settings,
        redis=client,
        upstreams={name: Upstream(nowhere, timeout=1) for name in ("notifications", "agent")},
        verifier=TokenVerifier(settings),
        chat_quotas=ChatQuotas.of(client, settings),
        user_requests=TokenBucket(client, 10, 10),
    )
    yield ConnectionManager(state, monotonic=lambda: NOW, wall=lambda: 1e9)
    await state.verifier.aclose()
    await client.aclose()


def test_watch_round_pauses_every_slice_and_skips_what_ended_meanwhile(
    manager: ConnectionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "WATCH_SLICE", 2)
    idle = NOW - manager.settings.ws_connection_timeout - 1
    held = [
        Held("c0", last_seen=idle),
        Held("c1", last_seen=NOW),
        Held("c2", last_seen=NOW),
        Held("c3", last_seen=idle),
        Held("c4", last_seen=idle),
    ]
    for conn in held:
        manager.connections[conn.conn_id] = conn  # type: ignore[assignment]
    closed: list[tuple[str, int]] = []
    monkeypatch.setattr(
        manager, "close_later", lambda conn, code, reason: closed.append((conn.conn_id, code))
    )
    slices = manager.watch_slices()
    next(slices)  # the first slice (c0, c1), then a pause
    assert closed == [("c0", 1000)]
    del manager.connections["c3"]  # ended (its close arrived) during the pause
    next(slices)  # the second slice (c2, c3), then a pause: c4 is not looked at yet
    assert closed == [("c0", 1000)]
    assert list(slices) == []  # the last slice (c4)
    assert closed == [("c0", 1000), ("c4", 1000)]
