"""Topics end to end over real gateways and real WebSocket clients, on one Redis and on the
local Redis Cluster: the authorization matrix per namespace, publications on both gateways,
recovery after kill -9 of a subscriber's gateway (exactly the missed publications), the epoch
change when Redis loses a topic's history (`recovered: false`), presence and join/leave across
gateways with a channel subscribed only where a subscriber is, and a dead gateway's presence
expiring within two heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection

from shared import cluster, keys
from shared.auth import mint_subscription_token
from shared.settings import Settings
from tests.conftest import SpawnService
from tests.gateway.conftest import INTERNAL, Cluster, eventually, open_ws, recv_until, silent
from tests.gateway.test_fanout_cluster import Stack
from tests.gateway.test_fanout_cluster import stack as stack  # the cluster topology (fixture)
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


@dataclass
class Topo:
    """Two gateways and a way to start a third (to kill it), over one Redis or a cluster."""

    a: ServiceProcess
    b: ServiceProcess
    spawn_gateway: Callable[[], ServiceProcess]
    redis: redis.Redis | RedisCluster

    async def numsub(self, channel: str) -> int:
        """Gateways subscribed to `channel` (sharded subscribers on a cluster)."""
        if isinstance(self.redis, RedisCluster):
            node = self.redis.get_node_from_key(channel)
            reply: Any = await self.redis.execute_command(
                "PUBSUB", "SHARDNUMSUB", channel, target_nodes=node
            )
        else:
            reply = await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "PUBSUB", "NUMSUB", channel
            )
        return int(reply[1])


@dataclass
class Topology:
    a: ServiceProcess
    b: ServiceProcess
    spawn_gateway: Callable[[], ServiceProcess]
    redis_url: str
    cluster: bool


@pytest.fixture(params=["single", "cluster"])
def topology(
    request: pytest.FixtureRequest, settings: Settings, spawn_service: SpawnService
) -> Topology:
    """Synchronous, as the process fixtures it asks for are."""
    if request.param == "single":
        gateways: Cluster = request.getfixturevalue("cluster")

        def spawn() -> ServiceProcess:
            return spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **gateways.upstream_env)

        return Topology(gateways.a, gateways.b, spawn, settings.redis_url, False)
    nodes: Stack = request.getfixturevalue("stack")

    def spawn_on_cluster() -> ServiceProcess:
        return nodes.spawn("gateway", WS_HEARTBEAT_INTERVAL="1")

    return Topology(nodes.a, nodes.b, spawn_on_cluster, nodes.redis.url, True)


@pytest.fixture
async def topo(topology: Topology) -> AsyncIterator[Topo]:
    client: redis.Redis | RedisCluster
    if topology.cluster:
        client = cluster.create_client(topology.redis_url)
        await client.initialize()
    else:
        client = redis.Redis.from_url(topology.redis_url)
    try:
        yield Topo(topology.a, topology.b, topology.spawn_gateway, client)
    finally:
        await client.aclose()


def _topic(namespace: str = "public") -> str:
    return f"{namespace}:t-{uuid.uuid4().hex[:10]}"


async def _answer(ws: ClientConnection, topic: str) -> dict[str, Any]:
    """The next frame about `topic` (publications and presence events skipped)."""
    return await recv_until(
        ws,
        lambda f: (
            (f.get("topic") == topic and f["type"] not in ("publication", "join", "leave"))
            or (f["type"] == "error" and (f["error"].get("details") or {}).get("topic") == topic)
        ),
    )


async def _subscribe(ws: ClientConnection, topic: str, **extra: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "subscribe", "topic": topic, **extra}))
    return await _answer(ws, topic)


async def _publish(gateway: ServiceProcess, topic: str, data: object) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway.url}/internal/v1/topics/{topic}/publications",
            json={"data": data},
            headers=INTERNAL,
        )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _publications(ws: ClientConnection, topic: str, count: int) -> list[tuple[int, Any]]:
    got = []
    for _ in range(count):
        frame = await recv_until(ws, lambda f: f["type"] == "publication" and f["topic"] == topic)
        got.append((frame["offset"], frame["data"]))
    return got


async def test_authorization_matrix(cluster: Cluster, token_for: Token, settings: Settings) -> None:
    """Per namespace: public for anyone; user:<id> only for that user; private only with a
    valid token for this topic and this user, signed with the right key. Each refusal is an
    error frame and the connection stays open."""
    me = uuid.uuid4()
    ws = await open_ws(cluster.a, uuid.uuid4(), token_for(me))
    private = _topic("private")
    good = mint_subscription_token(settings, me, private)
    cases: list[tuple[str, dict[str, Any], str]] = [
        (_topic(), {}, "subscribed"),
        (f"user:{me}", {}, "subscribed"),
        (f"user:{uuid.uuid4()}", {}, "SUBSCRIBE_FORBIDDEN"),
        (private, {}, "TOPIC_TOKEN_REQUIRED"),
        (private, {"token": good}, "subscribed"),
        (_topic("private"), {"token": good}, "TOPIC_TOKEN_INVALID"),  # another topic's
        (_topic("private"), {"token": "x.y.z"}, "TOPIC_TOKEN_INVALID"),
    ]
    expired_topic = _topic("private")
    expired = mint_subscription_token(settings, me, expired_topic, ttl=-10)
    cases.append((expired_topic, {"token": expired}, "TOPIC_TOKEN_EXPIRED"))
    other_user_topic = _topic("private")
    others = mint_subscription_token(settings, uuid.uuid4(), other_user_topic)
    cases.append((other_user_topic, {"token": others}, "TOPIC_TOKEN_INVALID"))
    wrong_key_topic = _topic("private")
    wrong_key = mint_subscription_token(
        Settings.from_env({"SECRET_KEY": "w" * 32, "INTERNAL_TOKEN": "i" * 32}), me, wrong_key_topic
    )
    cases.append((wrong_key_topic, {"token": wrong_key}, "TOPIC_TOKEN_INVALID"))
    cases.append(("nope:x", {}, "TOPIC_UNKNOWN_NAMESPACE"))
    cases.append(("public:a b", {}, "TOPIC_INVALID"))
    for topic, extra, expected in cases:
        answer = await _subscribe(ws, topic, **extra)
        got = answer["type"] if answer["type"] != "error" else answer["error"]["code"]
        assert got == expected, (topic, extra, answer)
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv_until(ws, lambda f: f["type"] == "pong"))["type"] == "pong"
    await ws.close()


async def test_publications_reach_subscribers_on_both_gateways(
    topo: Topo, token_for: Token
) -> None:
    """A publication reaches each subscriber once, on either gateway, in offset order."""
    topic = _topic()
    on_a = await open_ws(topo.a, uuid.uuid4(), token_for(uuid.uuid4()))
    on_b = await open_ws(topo.b, uuid.uuid4(), token_for(uuid.uuid4()))
    for ws in (on_a, on_b):
        assert (await _subscribe(ws, topic))["type"] == "subscribed"
    for n in range(3):
        await _publish(topo.a if n % 2 else topo.b, topic, {"n": n})
    for ws in (on_a, on_b):
        assert await _publications(ws, topic, 3) == [(1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2})]
        await ws.close()


async def test_recovery_after_kill_9_of_the_subscribers_gateway(
    topo: Topo, token_for: Token
) -> None:
    """The subscriber's gateway dies (kill -9); publications go on; resubscribing elsewhere
    with `since` delivers exactly the missed ones, then live ones, nothing twice."""
    topic, user = _topic(), uuid.uuid4()
    doomed = topo.spawn_gateway()
    ws = await open_ws(doomed, uuid.uuid4(), token_for(user))
    subscribed = await _subscribe(ws, topic)
    for n in (1, 2):
        await _publish(topo.a, topic, n)
    assert await _publications(ws, topic, 2) == [(1, 1), (2, 2)]
    doomed.kill()
    for n in (3, 4, 5):
        await _publish(topo.a, topic, n)
    again = await open_ws(topo.b, uuid.uuid4(), token_for(user))
    since = {"offset": 2, "epoch": subscribed["epoch"]}
    answer = await _subscribe(again, topic, since=since)
    assert answer["recovered"] is True and answer["epoch"] == subscribed["epoch"]
    assert [(p["offset"], p["data"]) for p in answer["publications"]] == [(3, 3), (4, 4), (5, 5)]
    await _publish(topo.a, topic, 6)
    assert await _publications(again, topic, 1) == [(6, 6)]
    assert await silent(again)
    await again.close()


async def test_lost_history_changes_the_epoch(topo: Topo, token_for: Token) -> None:
    """Redis loses the topic (its keys go, as with eviction or a restart without persistence):
    the live subscriber is told INSUFFICIENT_STATE, and resubscribing with its old position
    answers recovered false under a new epoch."""
    topic = _topic()
    ws = await open_ws(topo.a, uuid.uuid4(), token_for(uuid.uuid4()))
    subscribed = await _subscribe(ws, topic)
    await _publish(topo.b, topic, 1)
    await _publications(ws, topic, 1)
    await topo.redis.delete(keys.topic_meta(topic), keys.topic_history(topic))
    await _publish(topo.b, topic, 2)
    ended = await _answer(ws, topic)
    assert (ended["type"], ended["code"]) == ("unsubscribed", "INSUFFICIENT_STATE")
    answer = await _subscribe(ws, topic, since={"offset": 1, "epoch": subscribed["epoch"]})
    assert answer["recovered"] is False and answer["publications"] == []
    assert answer["epoch"] != subscribed["epoch"] and answer["offset"] == 1
    await ws.close()


async def test_presence_and_join_leave_across_gateways(topo: Topo, token_for: Token) -> None:
    """A subscriber on A sees B's subscriber join and leave; presence through either gateway
    lists both; the topic's channel is subscribed only by gateways holding a subscriber."""
    topic, alice, bob = _topic(), uuid.uuid4(), uuid.uuid4()
    channel = keys.topic_channel(topic)
    on_a = await open_ws(topo.a, uuid.uuid4(), token_for(alice))
    await _subscribe(on_a, topic)
    assert await topo.numsub(channel) == 1
    on_b = await open_ws(topo.b, uuid.uuid4(), token_for(bob))
    await _subscribe(on_b, topic)
    join = await recv_until(on_a, lambda f: f["type"] == "join" and f["user_id"] == str(bob))
    assert join["topic"] == topic
    assert await topo.numsub(channel) == 2
    await on_a.send(json.dumps({"type": "presence", "topic": topic}))
    listed = await recv_until(on_a, lambda f: f["type"] == "presence_result")
    assert {c["user_id"] for c in listed["clients"]} == {str(alice), str(bob)}
    await on_b.send(json.dumps({"type": "presence_stats", "topic": topic}))
    stats = await recv_until(on_b, lambda f: f["type"] == "presence_stats")
    assert (stats["clients"], stats["users"]) == (2, 2)
    await on_b.close()
    leave = await recv_until(on_a, lambda f: f["type"] == "leave")
    assert leave["user_id"] == str(bob)

    async def gone_from_b() -> bool:
        return await topo.numsub(channel) == 1

    await eventually(gone_from_b)
    await on_a.close()


async def test_dead_gateways_presence_expires_within_two_heartbeats(
    topo: Topo, token_for: Token
) -> None:
    """kill -9 of a gateway (heartbeat 1 s): its subscribers leave the presence within two
    heartbeats, with nobody cleaning up after it."""
    topic = _topic()
    doomed = topo.spawn_gateway()
    ws = await open_ws(doomed, uuid.uuid4(), token_for(uuid.uuid4()))
    await _subscribe(ws, topic)
    url = f"{topo.a.url}/internal/v1/topics/{topic}/presence"
    async with httpx.AsyncClient(headers=INTERNAL) as client:

        async def total() -> int:
            count: int = (await client.get(url)).json()["total"]
            return count

        async def present() -> bool:
            return await total() == 1

        await eventually(present)
        doomed.kill()
        killed = time.monotonic()

        async def expired() -> bool:
            return await total() == 0

        await eventually(expired, timeout=10)
        assert time.monotonic() - killed <= 2 * 1.0 + 0.5  # two heartbeats, and a poll


async def test_configured_namespaces_replace_the_defaults_and_apply_their_options(
    cluster: Cluster, spawn_service: SpawnService, token_for: Token
) -> None:
    """A gateway started with TOPIC_NAMESPACES knows only those namespaces and applies each
    one's options: `room` lets clients publish and keeps no presence, `mine` is for the user
    the name names, keeps presence and refuses client publications (the default); the
    built-in namespaces (`public`) are gone."""
    namespaces = {
        "room": {"subscribe": "authenticated", "publish": True, "presence": False},
        "mine": {"subscribe": "owner", "presence": True},
    }
    gateway = await asyncio.to_thread(
        spawn_service, "gateway", TOPIC_NAMESPACES=json.dumps(namespaces), **cluster.upstream_env
    )
    me = uuid.uuid4()
    ws = await open_ws(gateway, uuid.uuid4(), token_for(me))
    room, mine = _topic("room"), f"mine:{me}"

    def code(answer: dict[str, Any]) -> str:
        return str(answer["type"] if answer["type"] != "error" else answer["error"]["code"])

    assert code(await _subscribe(ws, _topic("public"))) == "TOPIC_UNKNOWN_NAMESPACE"
    assert code(await _subscribe(ws, f"mine:{uuid.uuid4()}")) == "SUBSCRIBE_FORBIDDEN"
    assert code(await _subscribe(ws, mine)) == "subscribed"
    assert code(await _subscribe(ws, room)) == "subscribed"

    # The acknowledgement and the publication itself race (the publication comes back through
    # Redis): read until both have arrived, in whichever order.
    await ws.send(json.dumps({"type": "publish", "topic": room, "data": {"hello": 1}}))
    acknowledged: dict[str, Any] | None = None
    delivered: list[tuple[int, Any]] = []
    async with asyncio.timeout(5):
        while acknowledged is None or (not delivered and code(acknowledged) == "published"):
            frame = await recv_until(ws, lambda f: f.get("topic") == room or f["type"] == "error")
            if frame["type"] == "publication":
                delivered.append((frame["offset"], frame["data"]))
            else:
                acknowledged = frame
    assert code(acknowledged) == "published"
    assert delivered == [(1, {"hello": 1})]

    await ws.send(json.dumps({"type": "publish", "topic": mine, "data": 1}))
    assert code(await _answer(ws, mine)) == "PUBLISH_FORBIDDEN"
    await ws.send(json.dumps({"type": "presence", "topic": room}))
    assert code(await _answer(ws, room)) == "PRESENCE_DISABLED"
    await ws.send(json.dumps({"type": "presence", "topic": mine}))
    assert code(await _answer(ws, mine)) == "presence_result"
    assert await silent(ws), "no publication arrived for the refused one"
    await ws.close()
