"""The session owner remembered in Redis (`ws:owner:{session_id}`): written after agent_svc
confirmed a claim, it lets any gateway admit the owner back without asking agent_svc, and only
ever confirms — anyone else, or an unknown session, is still decided by agent_svc."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed

from shared.infra import free_port
from tests.conftest import SpawnService
from tests.gateway.conftest import Cluster, closed_with, open_ws, recv_json
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


@pytest.fixture(scope="module")
def cut_off(spawn_service: SpawnService, cluster: Cluster) -> ServiceProcess:
    """A gateway on the cluster's Redis whose agent_svc address answers nothing."""
    return spawn_service(
        "gateway",
        NOTIFICATIONS_URL=cluster.notifications.url,
        AGENT_URL=f"http://127.0.0.1:{free_port()}",
    )


async def test_owner_claimed_elsewhere_is_admitted_without_agent_svc(
    cluster: Cluster, cut_off: ServiceProcess, token_for: Token
) -> None:
    """A session claimed through gateway A is reopened by its owner on a gateway that cannot
    reach agent_svc: the owner Redis remembers is enough."""
    owner, session = uuid.uuid4(), uuid.uuid4()
    ws = await open_ws(cluster.a, session, token_for(owner))
    await ws.close()
    back = await open_ws(cut_off, session, token_for(owner))
    await back.close()


async def test_remembered_owner_never_admits_anyone_else(
    cluster: Cluster, cut_off: ServiceProcess, token_for: Token
) -> None:
    """Another user of a remembered session, and any user of a session Redis does not know,
    still need agent_svc: without it they are refused (1013), never admitted."""
    owner, session = uuid.uuid4(), uuid.uuid4()
    ws = await open_ws(cluster.a, session, token_for(owner))
    await ws.close()
    unavailable = (1013, "session service unavailable: try again later")
    intruder = await open_ws(cut_off, session, token_for(uuid.uuid4()), greet=False)
    assert await closed_with(intruder) == unavailable
    stranger = await open_ws(cut_off, uuid.uuid4(), token_for(owner), greet=False)
    assert await closed_with(stranger) == unavailable


async def _admission(gateway: ServiceProcess, session: uuid.UUID, token: str) -> str:
    """The admission: "greeted", or the close code and reason the gateway refused it with."""
    ws = await open_ws(gateway, session, token, greet=False)
    try:
        frame = await recv_json(ws)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "connection dropped without a close frame"
        return f"{exc.rcvd.code} {exc.rcvd.reason}"
    await ws.close()
    assert frame["type"] == "connection_established", frame
    return "greeted"


async def test_connects_claiming_at_once_are_each_decided(
    cluster: Cluster, token_for: Token
) -> None:
    """Forty connections asking for sessions at the same moment (claimed together, in one
    request): every new session's user is admitted, a session another user already owns is
    refused, and of two users racing for one new session exactly one gets in."""
    owner, intruder = uuid.uuid4(), uuid.uuid4()
    taken, contested = uuid.uuid4(), uuid.uuid4()
    assert await _admission(cluster.a, taken, token_for(owner)) == "greeted"
    users = [uuid.uuid4() for _ in range(38)]
    outcomes = await asyncio.gather(
        *(_admission(cluster.a, uuid.uuid4(), token_for(user)) for user in users),
        _admission(cluster.a, taken, token_for(intruder)),
        *(_admission(cluster.a, contested, token_for(uuid.uuid4())) for _ in range(2)),
    )
    foreign = "1008 session belongs to another user"
    assert outcomes[:38] == ["greeted"] * 38
    assert outcomes[38] == foreign
    assert sorted(outcomes[39:]) == [foreign, "greeted"]
