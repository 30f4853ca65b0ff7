"""The whole fan-out path on a real three-primary Redis Cluster (`REDIS_CLUSTER=true`): two gateway
processes, notifications_svc and agent_svc, all pointed at one cluster node, publishing with
SPUBLISH and subscribing with SSUBSCRIBE.

A notification reaches a user's sessions on both gateways in seq order; user, session and
broadcast frames reach exactly their targets; the per-session cap holds across the gateways under
concurrent connects; a gateway killed with -9 is swept from the registry; notifications created
while the shard holding a user's channel is down reach the user's clients, in order and once each,
when the shard comes back (gap fill). The steps whose keys span slots, split in cluster mode, work:
a chat answer (gateway start event + request; the worker's finishing pipeline) and a dead-lettered
ingest entry. PostgreSQL is a database of this module's own on
the session's server, so no other test's outbox relay publishes these notifications elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from shared import cluster, keys, publish
from shared.infra import EmbeddedRedis
from shared.local_cluster import LocalRedisCluster
from shared.settings import Settings
from tests.agent_svc.stack import ask
from tests.conftest import PORT_VARS
from tests.gateway.conftest import (
    closed_with,
    equals,
    eventually,
    open_ws,
    recv_json,
    recv_until,
    silent,
)
from tests.gateway.conftest import publish as publish_http
from tests.notifications_svc.conftest import create
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


@dataclass
class Stack:
    redis: LocalRedisCluster
    env: dict[str, str]
    log_dir: Path
    a: ServiceProcess
    b: ServiceProcess
    notifications: ServiceProcess
    processes: list[ServiceProcess]

    def spawn(self, module: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(module, self.env | env, self.log_dir, PORT_VARS[module])
        self.processes.append(process)
        return process.start()


async def _database(settings: Settings, name: str, statement: str) -> None:
    admin = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await admin.execute(statement.format(name=name))
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def stack(
    local_cluster: LocalRedisCluster,
    base_env: dict[str, str],
    settings: Settings,
    log_dir: Path,
) -> Iterator[Stack]:
    nodes = local_cluster
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    asyncio.run(_database(settings, name, 'CREATE DATABASE "{name}"'))
    env = base_env | {
        "REDIS_CLUSTER": "true",
        "REDIS_URL": nodes.url,
        "DATABASE_URL": settings.asyncpg_dsn.rsplit("/", 1)[0] + f"/{name}",
    }
    processes: list[ServiceProcess] = []

    def spawn(module: str, **extra: str) -> ServiceProcess:
        process = ServiceProcess(module, env | extra, log_dir, PORT_VARS[module])
        processes.append(process)
        return process.start()

    try:
        notifications = spawn("notifications_svc")
        agent = spawn("agent_svc", AGENT_WORKERS="1", AGENT_OFFLINE_DELAY="0.01")
        env |= {"NOTIFICATIONS_URL": notifications.url, "AGENT_URL": agent.url}
        # The heartbeat is also the WebSocket keepalive's ping timeout: at 1 s a loaded machine
        # closed the test's clients 1011 "keepalive ping timeout" mid-test. 3 s keeps the pub/sub
        # link check (every 3 s) well inside the gap-fill test's 20 s.
        a = spawn("gateway", WS_HEARTBEAT_INTERVAL="3")
        b = spawn("gateway", WS_HEARTBEAT_INTERVAL="3")
        yield Stack(nodes, env, log_dir, a, b, notifications, processes)
    finally:
        ServiceProcess.stop_all(processes)
        asyncio.run(_database(settings, name, 'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
async def r(stack: Stack) -> AsyncIterator[RedisCluster]:
    client = cluster.create_client(stack.redis.url, decode_responses=True)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.notifications.url, timeout=10) as client:
        yield client


async def _titles(ws: ClientConnection, count: int, timeout: float = 10) -> list[str]:
    """The titles of the next `count` notification frames (other frames skipped)."""
    titles: list[str] = []
    for _ in range(count):
        frame = await recv_until(ws, lambda f: f["type"] == "notification", timeout)
        titles.append(frame["data"]["title"])
    return titles


async def _close(*sockets: ClientConnection) -> None:
    for ws in sockets:
        await ws.close()


async def test_notification_reaches_both_gateways_in_order(
    stack: Stack, token_for: Token, http: httpx.AsyncClient
) -> None:
    """Notifications created through notifications_svc reach the user's session on gateway A and
    another session on gateway B, each in creation order; another user's client gets nothing."""
    user, other = uuid.uuid4(), uuid.uuid4()
    on_a = await open_ws(stack.a, uuid.uuid4(), token_for(user))
    on_b = await open_ws(stack.b, uuid.uuid4(), token_for(user))
    bystander = await open_ws(stack.b, uuid.uuid4(), token_for(other))
    titles = [f"n{n}" for n in range(5)]
    for title in titles:
        await create(http, user, title=title)
    assert await _titles(on_a, 5) == titles
    assert await _titles(on_b, 5) == titles
    assert await silent(bystander)
    await _close(on_a, on_b, bystander)


async def test_frames_reach_their_targets_only(
    stack: Stack, token_for: Token, r: RedisCluster
) -> None:
    """A user frame, a session frame and a broadcast (with an excluded session), published through
    either gateway's internal API or from another service, reach exactly their targets."""
    user, other = uuid.uuid4(), uuid.uuid4()
    s1, s2, s3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    mine_a = await open_ws(stack.a, s1, token_for(user))
    mine_b = await open_ws(stack.b, s2, token_for(user))
    theirs = await open_ws(stack.a, s3, token_for(other))

    response = await publish_http(stack.b, user_id=str(user), frame={"type": "to_user"})
    assert response.status_code == 202 and response.json() == {"receivers": 2}, response.text
    for ws in (mine_a, mine_b):
        assert (await recv_json(ws))["type"] == "to_user"
    assert await silent(theirs)

    response = await publish_http(stack.a, session_id=str(s2), frame={"type": "to_session"})
    assert response.status_code == 202 and response.json() == {"receivers": 1}, response.text
    assert (await recv_json(mine_b))["type"] == "to_session"
    assert await silent(mine_a) and await silent(theirs)

    assert await publish.to_everyone(r, {"type": "to_all"}, exclude_session=s1) == 2
    for ws in (mine_b, theirs):
        assert (await recv_json(ws))["type"] == "to_all"
    assert await silent(mine_a)
    await _close(mine_a, mine_b, theirs)


async def test_session_cap_holds_across_gateways(
    stack: Stack, token_for: Token, r: RedisCluster
) -> None:
    """Twelve simultaneous connects to one session over both gateways: exactly five admitted,
    the others closed with 1013; the registry says five."""
    user, session = uuid.uuid4(), uuid.uuid4()
    token = token_for(user)

    async def attempt(i: int) -> Any:
        ws = await open_ws((stack.a, stack.b)[i % 2], session, token, greet=False)
        first = await recv_json(ws)
        if first.get("type") == "connection_established":
            return ws
        return None

    results = await asyncio.gather(*(attempt(i) for i in range(12)), return_exceptions=True)
    admitted = [ws for ws in results if isinstance(ws, ClientConnection)]
    assert len(admitted) == 5, results
    assert await r.scard(keys.ws_session(session)) == 5
    assert await r.smembers(keys.user_sessions(user)) == {str(session)}
    sixth = await open_ws(stack.b, session, token, greet=False)
    assert await closed_with(sixth) == (1013, "too many connections for this session")
    await _close(*admitted)
    await eventually(lambda: equals(r.exists(keys.ws_session(session)), 0), 5)
    # On a cluster the user's set is updated by a second command after the session's own set.
    await eventually(lambda: equals(r.exists(keys.user_sessions(user)), 0), 5)


async def test_killed_gateway_is_swept(stack: Stack, token_for: Token, r: RedisCluster) -> None:
    """`kill -9` of a third gateway: its entries leave the registry within a few heartbeats (1 s)
    while the survivor's stay."""
    doomed = stack.spawn("gateway", WS_HEARTBEAT_INTERVAL="1")
    user, session = uuid.uuid4(), uuid.uuid4()
    token = token_for(user)
    survivor = await open_ws(stack.a, session, token)
    victims = [await open_ws(doomed, session, token) for _ in range(3)]
    assert await r.scard(keys.ws_session(session)) == 4
    doomed.kill()
    for ws in victims:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    await eventually(lambda: equals(r.scard(keys.ws_session(session)), 1), 6)
    assert await r.smembers(keys.user_sessions(user)) == {str(session)}
    await survivor.close()


async def test_restarted_shard_is_gap_filled(
    stack: Stack,
    token_for: Token,
    http: httpx.AsyncClient,
    r: RedisCluster,
    private_redis: EmbeddedRedis,
) -> None:
    """The primary owning a user's channel goes down, and notifications are created meanwhile
    whose live frames go where no gateway listens (a notifications_svc publishing to another
    Redis): once the primary is back, the gateways re-subscribe and replay them by seq, so the
    user's clients on both gateways get them in order, once each, and live ones after."""
    user = uuid.uuid4()
    on_a = await open_ws(stack.a, uuid.uuid4(), token_for(user))
    on_b = await open_ws(stack.b, uuid.uuid4(), token_for(user))
    await create(http, user, title="before")
    for ws in (on_a, on_b):
        assert await _titles(ws, 1) == ["before"]
    loop = asyncio.get_running_loop()
    # Process start-up and shutdown run off the event loop: while it is blocked the clients
    # cannot answer the gateways' keepalive pings, and a slow start under load closed them 1011.
    elsewhere = await loop.run_in_executor(
        None,
        functools.partial(
            stack.spawn, "notifications_svc", REDIS_CLUSTER="false", REDIS_URL=private_redis.url
        ),
    )
    shard = stack.redis.owner_of(r.keyslot(keys.user_channel(user)))
    await loop.run_in_executor(None, stack.redis.stop_node, shard)
    try:
        missed = [f"missed {n}" for n in range(3)]
        async with httpx.AsyncClient(base_url=elsewhere.url, timeout=10) as lost:
            for title in missed:
                await create(lost, user, title=title)
    finally:
        await loop.run_in_executor(None, stack.redis.start_node, shard)
        await loop.run_in_executor(None, elsewhere.stop)
    for ws in (on_a, on_b):
        assert await _titles(ws, 3, timeout=20) == missed
    await create(http, user, title="after")
    for ws in (on_a, on_b):
        assert await _titles(ws, 1) == ["after"]
        assert await silent(ws)
    await _close(on_a, on_b)


async def test_chat_answers_on_the_cluster(stack: Stack, token_for: Token) -> None:
    """A chat question through the gateway is answered by an agent worker (the offline model)
    from start to end, twice in one session: the session lock was released."""
    token, session = token_for(uuid.uuid4()), uuid.uuid4()
    loop = asyncio.get_running_loop()
    for question in ("hello", "and again"):
        response, events = await loop.run_in_executor(
            None, functools.partial(ask, stack.a, token, question, session)
        )
        assert response.status_code == 200, response.text
        kinds = [event.type for event in events]
        assert kinds[0] == "start" and kinds[-1] == "end" and "token" in kinds, kinds


async def test_invalid_ingest_entry_is_dead_lettered(stack: Stack, r: RedisCluster) -> None:
    """An ingest entry that is not a notification lands in the dead-letter stream and leaves
    nothing pending (the two streams live in different slots)."""
    entry = await r.xadd(keys.NOTIFICATIONS_INGEST_STREAM, {"payload": "not json"})

    async def dead_lettered() -> bool:
        dead: list[tuple[str, dict[str, str]]] = await r.xrange(  # type: ignore[assignment]
            keys.NOTIFICATIONS_DEAD_LETTER_STREAM
        )
        return any(fields.get("dead_source_id") == entry for _, fields in dead)

    async def nothing_pending() -> bool:
        group = keys.NOTIFICATIONS_INGEST_GROUP
        return bool((await r.xpending(keys.NOTIFICATIONS_INGEST_STREAM, group))["pending"] == 0)

    await eventually(dead_lettered, 10)
    # On a cluster the acknowledgement is a second command after the dead letter.
    await eventually(nothing_pending, 5)
