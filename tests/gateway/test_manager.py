"""Notification delivery guarantees across two gateways: resume with `?last_seq=` while
notifications are being created, and a Redis restart mid-traffic — every notification reaches
every connection once, in seq order."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as redis
from websockets.asyncio.client import ClientConnection

from shared import keys, publish
from shared.infra import EmbeddedRedis, free_port
from shared.wire import EnvelopeMeta, encode_envelope
from tests.conftest import Infra, SpawnService
from tests.gateway.conftest import (
    INTERNAL,
    Cluster,
    closed_with,
    counter,
    equals,
    eventually,
    open_ws,
    recv_json,
    silent,
)
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


async def create(
    client: httpx.AsyncClient, notifications: ServiceProcess, user: uuid.UUID, n: int
) -> int:
    """Create notification number `n` for `user`; its seq."""
    response = await client.post(
        notifications.url + "/internal/v1/notifications",
        json={"user_id": str(user), "title": f"n{n}", "content": "c", "type": "test"},
        headers=INTERNAL,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    seq = response.json()["seq"]
    assert isinstance(seq, int)
    return seq


async def collect(ws: ClientConnection, until_seq: int, timeout: float = 20) -> list[int]:
    """The seqs of notification frames received until `until_seq` arrives."""
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while not seqs or seqs[-1] < until_seq:
            frame: dict[str, Any] = await recv_json(ws, timeout)
            if frame["type"] == "notification":
                seqs.append(frame["data"]["seq"])
    return seqs


async def test_resume_replays_then_goes_live_without_gap_or_duplicate(
    cluster: Cluster, token_for: Token
) -> None:
    """A client resuming with `?last_seq=N` while notifications keep being created gets every
    seq after N once, in order; a client that stayed connected gets the live ones too."""
    user = uuid.uuid4()
    token = token_for(user)
    async with httpx.AsyncClient() as client:
        first = [await create(client, cluster.notifications, user, i) for i in range(5)]
        resume_from = first[1]
        steady = await open_ws(cluster.b, uuid.uuid4(), token)

        creating_started = asyncio.Event()

        async def keep_creating() -> list[int]:
            seqs = []
            for i in range(5, 30):
                seqs.append(await create(client, cluster.notifications, user, i))
                creating_started.set()
            return seqs

        creating = asyncio.create_task(keep_creating())
        await creating_started.wait()
        resumed = await open_ws(cluster.a, uuid.uuid4(), token, query={"last_seq": resume_from})
        later = await creating
    expected = [s for s in first + later if s > resume_from]
    assert await collect(resumed, expected[-1]) == expected
    live = await collect(steady, later[-1])
    assert live == sorted(set(live)) and live[-1] == later[-1]
    for ws in (resumed, steady):
        await ws.close()


async def test_resume_from_zero_gets_everything(cluster: Cluster, token_for: Token) -> None:
    """`?last_seq=0` replays the user's whole history, in order, then nothing more."""
    user = uuid.uuid4()
    async with httpx.AsyncClient() as client:
        seqs = [await create(client, cluster.notifications, user, i) for i in range(3)]
    ws = await open_ws(cluster.a, uuid.uuid4(), token_for(user), query={"last_seq": 0})
    assert await collect(ws, seqs[-1]) == seqs
    await ws.close()


async def test_pubsub_link_drop_is_gap_filled(
    cluster: Cluster, infra: Infra, token_for: Token
) -> None:
    """When a gateway's pub/sub link is cut while Redis stays up (what was published meanwhile is
    gone from pub/sub), the gateway replays it from the notifications service after
    reconnecting: in order, once."""
    user = uuid.uuid4()
    ws = await open_ws(cluster.a, uuid.uuid4(), token_for(user))
    killer = redis.Redis.from_url(infra.redis.url)
    seqs: list[int] = []
    async with httpx.AsyncClient() as client:
        for round_ in range(3):
            await killer.client_kill_filter(_type="pubsub")
            seqs += [
                await create(client, cluster.notifications, user, round_ * 3 + i) for i in range(3)
            ]
        assert await collect(ws, seqs[-1]) == seqs
        metrics = (await client.get(cluster.a.url + "/metrics")).text
    await killer.aclose()
    await ws.close()
    filled = next(line for line in metrics.splitlines() if line.startswith("gateway_gap_fill_"))
    assert float(filled.split()[-1]) > 0  # the replay path did the work


def _own_stack(
    spawn_service: SpawnService, redis: EmbeddedRedis, database: str, gateways: int = 1
) -> tuple[ServiceProcess, list[ServiceProcess]]:
    """notifications_svc, agent_svc (no workers) and `gateways` gateways (1 s heartbeat) on a
    test's own Redis and database, free to be stopped and restarted."""
    env = {"REDIS_URL": redis.url, "DATABASE_URL": database}
    notifications = spawn_service("notifications_svc", **env)
    agent = spawn_service("agent_svc", AGENT_WORKERS="0", **env)
    upstream = {"NOTIFICATIONS_URL": notifications.url, "AGENT_URL": agent.url}
    started = [
        spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **env, **upstream)
        for _ in range(gateways)
    ]
    return notifications, started


async def test_redis_restart_mid_traffic_loses_nothing(
    spawn_service: SpawnService,
    private_redis: EmbeddedRedis,
    private_database: str,
    token_for: Token,
) -> None:
    """Redis stops and restarts while notifications are created: clients on both gateways end
    up with every seq exactly once, in order."""
    notifications, (a, b) = _own_stack(spawn_service, private_redis, private_database, 2)
    user = uuid.uuid4()
    token = token_for(user)
    on_a = await open_ws(a, uuid.uuid4(), token)
    on_b = await open_ws(b, uuid.uuid4(), token)
    async with httpx.AsyncClient() as client:
        seqs = [await create(client, notifications, user, i) for i in range(5)]
        await asyncio.get_running_loop().run_in_executor(None, private_redis.stop)
        seqs += [await create(client, notifications, user, i) for i in range(5, 15)]
        await asyncio.get_running_loop().run_in_executor(None, private_redis.start)
        seqs += [await create(client, notifications, user, i) for i in range(15, 25)]
    for ws in (on_a, on_b):
        assert await collect(ws, seqs[-1], timeout=30) == seqs
    for ws in (on_a, on_b):
        await ws.close()


async def test_gap_fills_after_a_redis_restart_share_replay_calls(
    spawn_service: SpawnService,
    private_redis: EmbeddedRedis,
    private_database: str,
    token_for: Token,
) -> None:
    """After a Redis restart, the gap fills of many users (more than the eight that used to run
    at once) go to notifications_svc together, in one or two batched calls, and every client
    gets what was published while the link was down, in order, once."""
    notifications, (gateway,) = _own_stack(spawn_service, private_redis, private_database)
    users = [uuid.uuid4() for _ in range(30)]
    sockets = await asyncio.gather(*(open_ws(gateway, uuid.uuid4(), token_for(u)) for u in users))
    async with httpx.AsyncClient(timeout=30) as client:
        calls = await counter(client, gateway, "gateway_replay_calls_total")
        await asyncio.get_running_loop().run_in_executor(None, private_redis.stop)
        created = await client.post(
            notifications.url + "/internal/v1/notifications/batch",
            json={
                "notifications": [
                    {"user_id": str(u), "title": f"t{k}", "content": "c", "type": "test"}
                    for u in users
                    for k in range(2)
                ]
            },
            headers=INTERNAL,
        )
        assert created.status_code == 201, created.text
        seqs: dict[str, list[int]] = {}
        for item in created.json()["items"]:
            seqs.setdefault(item["notification"]["user_id"], []).append(item["notification"]["seq"])
        await asyncio.get_running_loop().run_in_executor(None, private_redis.start)
        for user, ws in zip(users, sockets, strict=True):
            assert await collect(ws, seqs[str(user)][-1], timeout=30) == seqs[str(user)]
        assert await counter(client, gateway, "gateway_replay_calls_total") - calls <= 2
    for ws in sockets:
        await ws.close()


async def test_silent_redis_link_is_replaced_and_gap_filled(
    spawn_service: SpawnService,
    private_redis: EmbeddedRedis,
    private_database: str,
    token_for: Token,
) -> None:
    """A Redis that stops answering without closing the connection (SIGSTOP: what a half-open
    link looks like to the gateway) is given up after 2.5 ping intervals; once Redis answers
    again the gateway resubscribes and replays what it missed, in order, once."""
    notifications, (gateway,) = _own_stack(spawn_service, private_redis, private_database)
    user = uuid.uuid4()
    ws = await open_ws(gateway, uuid.uuid4(), token_for(user))
    pid = private_redis.pid
    assert pid is not None
    async with httpx.AsyncClient() as client:
        seqs = [await create(client, notifications, user, i) for i in range(3)]
        assert await collect(ws, seqs[-1]) == seqs
        os.kill(pid, signal.SIGSTOP)
        try:
            seqs += [await create(client, notifications, user, i) for i in range(3, 6)]
            # Ping interval 1 s: the link is given up after 2.5 s of silence.
            await eventually(lambda: _logged(gateway, "pub/sub link silent"), timeout=15)
        finally:
            os.kill(pid, signal.SIGCONT)
        seqs += [await create(client, notifications, user, i) for i in range(6, 9)]
        assert await collect(ws, seqs[-1], timeout=30) == seqs[3:]
        metrics = (await client.get(gateway.url + "/metrics")).text
    await ws.close()
    reconnects = next(
        line for line in metrics.splitlines() if line.startswith("gateway_pubsub_reconnects")
    )
    assert float(reconnects.split()[-1]) >= 1


async def test_fresh_connections_get_only_new_notifications(
    cluster: Cluster, token_for: Token
) -> None:
    """Without `last_seq`, a connection gets the notifications created after it connected, once,
    whether it is the user's first connection on its gateway or joins a sibling there."""
    user = uuid.uuid4()
    token = token_for(user)
    async with httpx.AsyncClient() as client:
        await create(client, cluster.notifications, user, 0)
        first = await open_ws(cluster.a, uuid.uuid4(), token)
        second = await open_ws(cluster.a, uuid.uuid4(), token)  # adopts the sibling's baseline
        other = await open_ws(cluster.b, uuid.uuid4(), token)
        later = [await create(client, cluster.notifications, user, i) for i in range(1, 4)]
    for ws in (first, second, other):
        assert await collect(ws, later[-1]) == later
        await ws.close()


@pytest.fixture(scope="module")
def no_replay(spawn_service: SpawnService, cluster: Cluster) -> ServiceProcess:
    """A gateway on the cluster's Redis whose notifications_svc address answers nothing."""
    return spawn_service(
        "gateway",
        WS_HEARTBEAT_INTERVAL="1",
        NOTIFICATIONS_URL=f"http://127.0.0.1:{free_port()}",
        AGENT_URL=cluster.agent.url,
    )


async def test_seq_known_to_redis_spares_the_notifications_service(
    cluster: Cluster, no_replay: ServiceProcess, infra: Infra, token_for: Token
) -> None:
    """Once a notification was published Redis knows the user's latest seq: on a gateway that
    cannot reach notifications_svc, a fresh connection takes it as its baseline and gets the
    next notification live, once. A resume always needs the replay, the authority — even from
    exactly the seq Redis knows (a restart can roll Redis's seq back) — so there it is refused
    with 1013."""
    user = uuid.uuid4()
    token = token_for(user)
    r = redis.Redis.from_url(infra.redis.url)
    async with httpx.AsyncClient() as client:
        seqs = [await create(client, cluster.notifications, user, i) for i in range(2)]
        await eventually(lambda: equals(publish.latest_seq(r, user), seqs[-1]), 5)
        fresh = await open_ws(no_replay, uuid.uuid4(), token)
        for last_seq in (seqs[-1], seqs[0]):
            resumed = await open_ws(
                no_replay, uuid.uuid4(), token, query={"last_seq": last_seq}, greet=False
            )
            assert await closed_with(resumed) == (
                1013,
                "notifications unavailable: reconnect with last_seq",
            )
        later = await create(client, cluster.notifications, user, 2)
    await r.aclose()
    assert await collect(fresh, later) == [later]
    await fresh.close()


async def test_client_of_killed_gateway_resumes_elsewhere(
    cluster: Cluster, spawn_service: SpawnService, token_for: Token
) -> None:
    """A client whose gateway is killed (-9) reconnects to another with its last seq and gets
    what was created meanwhile, once, in order."""
    doomed = spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **cluster.upstream_env)
    user = uuid.uuid4()
    token = token_for(user)
    ws = await open_ws(doomed, uuid.uuid4(), token)
    async with httpx.AsyncClient() as client:
        seen = [await create(client, cluster.notifications, user, i) for i in range(3)]
        assert await collect(ws, seen[-1]) == seen
        doomed.kill()
        missed = [await create(client, cluster.notifications, user, i) for i in range(3, 6)]
    resumed = await open_ws(cluster.b, uuid.uuid4(), token, query={"last_seq": seen[-1]})
    assert await collect(resumed, missed[-1]) == missed
    await resumed.close()


async def test_large_fanout_keeps_publish_order_per_connection(
    cluster: Cluster, spawn_service: SpawnService, infra: Infra, token_for: Token
) -> None:
    """A broadcast to 300 connections, delivered in chunks of 16 (`WS_DELIVERY_CHUNK`), is never
    overtaken by a user frame published right after it, and a duplicate seq is still dropped."""
    gateway = spawn_service("gateway", WS_DELIVERY_CHUNK="16", **cluster.upstream_env)
    users = [uuid.uuid4() for _ in range(30)]
    tokens = {user: token_for(user) for user in users}
    owners = [users[i % len(users)] for i in range(300)]
    clients: list[ClientConnection] = []
    for start in range(0, len(owners), 50):
        clients += await asyncio.gather(
            *(open_ws(gateway, uuid.uuid4(), tokens[u]) for u in owners[start : start + 50])
        )
    client = redis.Redis.from_url(infra.redis.url)
    try:
        # One pipeline: Redis relays the frames back to back, so the user frames reach the
        # gateway while the broadcast before them is still being delivered in chunks.
        async with client.pipeline(transaction=False) as pipe:
            for round_ in (1, 2):
                pipe.publish(*_envelope(keys.BROADCAST_CHANNEL, f"b{round_}"))
                for user in users:
                    for _ in range(2):  # the second copy is a duplicate seq: dropped
                        pipe.publish(*_envelope(keys.user_channel(user), f"u{round_}", seq=round_))
            await pipe.execute()

        async def received(ws: ClientConnection) -> list[str]:
            return [(await recv_json(ws, 20))["data"]["n"] for _ in range(4)]

        for got in await asyncio.gather(*(received(ws) for ws in clients)):
            assert got == ["b1", "u1", "b2", "u2"]
        assert all(await asyncio.gather(*(silent(ws) for ws in clients[:20])))
    finally:
        await client.aclose()
        await asyncio.gather(*(ws.close() for ws in clients))


def _envelope(channel: str, name: str, seq: int | None = None) -> tuple[str, bytes]:
    """A PUBLISH's arguments for a small test frame, enveloped as `shared.publish` does."""
    frame = msgspec.json.encode({"type": "test", "data": {"n": name}})
    return channel, encode_envelope(frame, EnvelopeMeta(seq=seq, ts=time.time()))


async def _logged(service: ServiceProcess, text: str) -> bool:
    return text in service.log_path.read_text(errors="replace")
