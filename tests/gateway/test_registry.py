"""The Redis registry across gateway processes: exact seed keys, the per-session cap held across
instances, healing after `kill -9`, cleaning on graceful shutdown."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis as redis_sync
import redis.asyncio as redis
from websockets.exceptions import ConnectionClosed

from gateway.registry import (
    ATTACHED,
    BEAT_CHUNK,
    OWNER_UNCONFIRMED,
    SESSION_FULL,
    USER_FULL,
    Attach,
    Registry,
)
from shared import keys, redis_client
from shared.infra import EmbeddedRedis
from shared.settings import Settings
from tests.conftest import Infra, SpawnService
from tests.gateway.conftest import (
    WS_PATHS,
    Cluster,
    closed_with,
    equals,
    eventually,
    open_ws,
    recv_json,
)

Token = Callable[..., str]


@pytest.fixture
async def r(infra: Infra) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(infra.redis.url, decode_responses=True)
    yield client
    await client.aclose()


async def test_seed_keys_stay_exact(cluster: Cluster, token_for: Token, r: redis.Redis) -> None:
    """`ws:session:{id}` holds one member per live connection and `user:sessions:{id}` the user's
    connected sessions, whichever gateway holds them; both empty out as connections close."""
    user, s1, s2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    token = token_for(user)
    a1 = await open_ws(cluster.a, s1, token)
    b1 = await open_ws(cluster.b, s1, token)
    b2 = await open_ws(cluster.b, s2, token)
    assert await r.scard(keys.ws_session(s1)) == 2
    assert await r.scard(keys.ws_session(s2)) == 1
    assert await r.smembers(keys.user_sessions(user)) == {str(s1), str(s2)}
    await b2.close()
    await eventually(lambda: equals(r.exists(keys.ws_session(s2)), 0), 5)
    assert await r.smembers(keys.user_sessions(user)) == {str(s1)}
    await a1.close()
    await eventually(lambda: equals(r.scard(keys.ws_session(s1)), 1), 5)
    await b1.close()
    await eventually(lambda: equals(r.exists(keys.user_sessions(user)), 0), 5)
    assert not await r.exists(keys.ws_session(s1))


async def test_session_cap_holds_across_instances(
    cluster: Cluster, token_for: Token, r: redis.Redis
) -> None:
    """Five connections of one session spread over two gateways; the sixth, anywhere, gets 1013;
    once one leaves, a new one fits."""
    user, session = uuid.uuid4(), uuid.uuid4()
    token = token_for(user)
    gateways = [cluster.a, cluster.b, cluster.a, cluster.b, cluster.a]
    held = [await open_ws(g, session, token) for g in gateways]
    for gateway in (cluster.a, cluster.b):
        sixth = await open_ws(gateway, session, token, greet=False)
        assert await closed_with(sixth) == (1013, "too many connections for this session")
    assert await r.scard(keys.ws_session(session)) == 5
    await held.pop().close()
    await eventually(lambda: equals(r.scard(keys.ws_session(session)), 4), 5)
    held.append(await open_ws(cluster.b, session, token))
    for ws in held:
        await ws.close()


async def test_concurrent_connects_never_exceed_cap(
    cluster: Cluster, token_for: Token, r: redis.Redis
) -> None:
    """Twelve simultaneous connects to one session over two gateways: exactly five are admitted."""
    user, session = uuid.uuid4(), uuid.uuid4()
    token = token_for(user)

    async def attempt(i: int) -> object:
        ws = await open_ws((cluster.a, cluster.b)[i % 2], session, token, greet=False)
        first = await recv_json(ws)
        return ws if first.get("type") == "connection_established" else None

    results = await asyncio.gather(*(attempt(i) for i in range(12)), return_exceptions=True)
    admitted = [ws for ws in results if ws is not None and not isinstance(ws, BaseException)]
    assert len(admitted) == 5
    assert await r.scard(keys.ws_session(session)) == 5
    for ws in admitted:
        await ws.close()  # type: ignore[attr-defined]


def _instances(members: set[Any]) -> set[str]:
    """The instances holding a session's connections (members are `<instance>:<n>`)."""
    return {str(member).rpartition(":")[0] for member in members}


async def test_killed_instance_heals_within_two_heartbeats(
    cluster: Cluster, spawn_service: SpawnService, token_for: Token, r: redis.Redis
) -> None:
    """`kill -9` of a gateway: its registry entries vanish (the survivors sweep an instance
    whose beat expired, which it does 1.5 heartbeats after the last one: within about two
    heartbeats, 1 s here), the other gateway's entries stay, and the session's slots are usable
    again. The bound is checked on the beat's expiry, not on a clock."""
    doomed = spawn_service("gateway", WS_HEARTBEAT_INTERVAL="1", **cluster.upstream_env)
    user, session = uuid.uuid4(), uuid.uuid4()
    token = token_for(user)
    survivor = await open_ws(cluster.a, session, token)
    before = _instances(await r.smembers(keys.ws_session(session)))
    victims = [await open_ws(doomed, session, token) for _ in range(4)]
    assert await r.scard(keys.ws_session(session)) == 5
    (instance,) = _instances(await r.smembers(keys.ws_session(session))) - before
    assert 0 < await r.pttl(keys.gateway_alive(instance)) <= 1500  # 1.5 heartbeats at most
    doomed.kill()
    for ws in victims:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    await eventually(lambda: equals(r.scard(keys.ws_session(session)), 1), 30)
    assert await r.smembers(keys.user_sessions(user)) == {str(session)}
    replacement = [await open_ws(cluster.b, session, token) for _ in range(4)]
    for ws in [survivor, *replacement]:
        await ws.close()


@pytest.mark.parametrize("ws_path", sorted(WS_PATHS))
async def test_graceful_shutdown_closes_1012_and_cleans_registry(
    cluster: Cluster, spawn_service: SpawnService, token_for: Token, r: redis.Redis, ws_path: str
) -> None:
    """SIGTERM: every client gets 1012 with a reason, and the registry holds nothing of it (on
    both WebSocket read paths)."""
    leaving = spawn_service(
        "gateway", WS_HEARTBEAT_INTERVAL="1", **WS_PATHS[ws_path], **cluster.upstream_env
    )
    user, session = uuid.uuid4(), uuid.uuid4()
    clients = [await open_ws(leaving, session, token_for(user)) for _ in range(3)]
    assert await r.scard(keys.ws_session(session)) == 3
    stopping = asyncio.get_running_loop().run_in_executor(None, leaving.stop)
    closes = [await closed_with(ws, timeout=10) for ws in clients]
    await stopping
    log = leaving.log()
    assert all(code == 1012 and reason for code, reason in closes), (closes, log)
    assert "Application shutdown complete" in log, log
    assert not await r.exists(keys.ws_session(session)), log
    assert not await r.exists(keys.user_sessions(user)), log


@pytest.fixture
async def raw(infra: Infra) -> AsyncIterator[redis.Redis]:
    """A client as the gateway makes it (bytes replies)."""
    client = redis.Redis.from_url(infra.redis.url)
    yield client
    await client.aclose()


async def test_attach_checks_the_remembered_owner_first(raw: redis.Redis) -> None:
    """With `owner_check`, the attach script registers only a user Redis remembers as the
    session's owner; an unknown session or another user gets `OWNER_UNCONFIRMED` and leaves no
    trace in the registry."""
    registry = Registry(raw, uuid.uuid4().hex[:12], 30)
    owner, intruder, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    unknown = await registry.attach("c1", session, owner, 5, owner_check=True)
    assert unknown == OWNER_UNCONFIRMED
    await raw.set(keys.session_owner(session), str(owner))
    foreign = await registry.attach("c2", session, intruder, 5, owner_check=True)
    assert foreign == OWNER_UNCONFIRMED
    assert not await raw.exists(keys.ws_session(session), keys.ws_user(intruder))
    assert await registry.attach("c3", session, owner, 5, owner_check=True) == ATTACHED
    assert await raw.smembers(keys.ws_session(session)) == {b"c3"}
    await registry.leave()


async def test_500_connections_detached_in_one_call(raw: redis.Redis) -> None:
    """500 connections of 100 sessions detached in one call (the manager sends each slice of
    closed connections so): the registry is empty after — seed keys, per-user sets, the
    instance's hash."""
    registry = Registry(raw, uuid.uuid4().hex[:12], 30)
    users = [uuid.uuid4() for _ in range(20)]
    sessions = [(uuid.uuid4(), users[n % 20]) for n in range(100)]
    held = [(f"c{n}", *sessions[n % 100]) for n in range(500)]
    for conn_id, session, user in held:
        assert await registry.attach(conn_id, session, user, 5) == ATTACHED
    await registry.detach_many([(c, str(s), str(u)) for c, s, u in held])
    names = [keys.gateway_connections(registry.instance_id)]
    names += [keys.ws_session(session) for session, _ in sessions]
    names += [keys.user_sessions(user) for user in users] + [keys.ws_user(u) for u in users]
    assert await raw.exists(*names) == 0
    await registry.leave()


async def test_loaded_scripts_spare_a_burst_its_noscript_errors(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    """On a Redis that has no script cached, a registry whose scripts were loaded (`load()`,
    as the manager does at start) attaches and detaches 100 connections in 100 concurrent
    calls each without one NOSCRIPT error (the server's error statistics stay empty); without
    `load()` the same burst makes them (redis-py's EVALSHA first, SCRIPT LOAD on NOSCRIPT)."""
    client = redis_client.create_client(replace(settings, redis_url=private_redis.url))

    async def burst(registry: Registry) -> None:
        held = [(f"c{n}", uuid.uuid4(), uuid.uuid4()) for n in range(100)]
        await asyncio.gather(*(registry.attach(c, s, u, 5) for c, s, u in held))
        await asyncio.gather(*(registry.detach(c, s, u) for c, s, u in held))

    try:
        loaded = Registry(client, uuid.uuid4().hex[:12], 30)
        await loaded.load()
        await burst(loaded)
        assert await client.info("errorstats") == {}
        await client.script_flush()
        await burst(Registry(client, uuid.uuid4().hex[:12], 30))
        assert "errorstat_NOSCRIPT" in await client.info("errorstats")
    finally:
        await client.aclose()


async def test_attach_many_keeps_every_cap_within_one_call(raw: redis.Redis) -> None:
    """Connections attached in one call are judged in order, each seeing those before it: the
    session cap and the user cap hold inside the batch, and an unconfirmed owner is refused
    without taking a place."""
    registry = Registry(raw, uuid.uuid4().hex[:12], 30)
    user, other, session, solo = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await raw.set(keys.session_owner(session), str(user))
    entries = [Attach(f"s{n}", session, user, 5, 6, True) for n in range(3)]
    entries.append(Attach("intruder", session, other, 5, 6, True))
    entries += [Attach(f"s{n}", session, user, 5, 6, True) for n in range(3, 7)]
    entries.append(Attach("solo", solo, user, 5, 6, False))
    answers = await registry.attach_many(entries)
    assert answers == [ATTACHED] * 3 + [OWNER_UNCONFIRMED] + [ATTACHED] * 2 + [SESSION_FULL] * 2 + [
        ATTACHED
    ]
    assert await raw.scard(keys.ws_session(session)) == 5
    assert await registry.attach("late", solo, user, 5, 6) == USER_FULL
    await registry.leave()


async def test_hundreds_closing_at_once_leave_nothing_behind(
    cluster: Cluster, token_for: Token, r: redis.Redis
) -> None:
    """400 clients of one gateway closing at once (their leaving is finished in slices): every
    registry entry and every pub/sub subscription of theirs goes, while a client of one of
    their sessions that connects right after stays registered and subscribed."""
    users = [uuid.uuid4() for _ in range(40)]
    held = [(uuid.uuid4(), users[n % 40]) for n in range(400)]
    sockets = []
    for start in range(0, len(held), 100):
        batch = held[start : start + 100]
        sockets += await asyncio.gather(*(open_ws(cluster.a, s, token_for(u)) for s, u in batch))
    await asyncio.gather(*(ws.close() for ws in sockets))
    session, user = held[0]
    late = await open_ws(cluster.a, session, token_for(user))
    names = [keys.ws_session(s) for s, _ in held] + [keys.ws_user(u) for u in users]
    channels = [keys.session_channel(s) for s, _ in held] + [keys.user_channel(u) for u in users]

    async def subscribed() -> list[bytes | str]:
        return [channel for channel, count in await r.pubsub_numsub(*channels) if count]

    await eventually(lambda: equals(r.exists(*names), 2), 10)  # the late client's session, user
    assert await r.scard(keys.ws_session(session)) == 1
    assert await r.scard(keys.ws_user(user)) == 1
    await eventually(
        lambda: equals(subscribed(), [keys.session_channel(session), keys.user_channel(user)]), 10
    )
    await late.close()


async def test_a_beat_takes_its_connections_a_chunk_at_a_time(infra: Infra) -> None:
    """A beat pulls the next `BEAT_CHUNK` of held connections only once the chunk before has
    been refreshed in Redis: at 10,000 connections, building every tuple at once held the event
    loop over 20 ms."""
    client = redis.Redis.from_url(infra.redis.url)
    sync = redis_sync.Redis.from_url(infra.redis.url)
    registry = Registry(client, f"beat-{uuid.uuid4().hex[:8]}", heartbeat=30)
    user = str(uuid.uuid4())
    sessions = [str(uuid.uuid4()) for _ in range(BEAT_CHUNK + 1)]
    first_key = keys.ws_session(sessions[0])
    sync.sadd(first_key, "c0")  # held without expiry until a beat refreshes it
    expiry_when_pulled: list[int] = []

    def held() -> Iterator[tuple[str, str, str]]:
        for i, session in enumerate(sessions):
            expiry_when_pulled.append(sync.pttl(first_key))
            yield (f"c{i}", session, user)

    try:
        await registry.beat(held())
    finally:
        sync.delete(first_key)
        await client.aclose()
        sync.close()
    assert len(expiry_when_pulled) == BEAT_CHUNK + 1
    assert set(expiry_when_pulled[:BEAT_CHUNK]) == {-1}  # the first chunk, before its round trip
    assert expiry_when_pulled[BEAT_CHUNK] > 0  # the second, after the first was refreshed
