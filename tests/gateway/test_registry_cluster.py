"""`ClusterRegistry` on a real three-primary Redis Cluster: the seed's keys kept exact with every
script within one slot, the per-session cap atomic across instances, a dead instance swept, a
session dropped from its user's set by a racing detach healed by the next beat, and
`active_sessions` scanning every primary."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.registry import (
    ATTACHED,
    OWNER_UNCONFIRMED,
    ClusterRegistry,
    Registry,
    create_registry,
)
from shared import cluster, keys
from shared.local_cluster import SLOTS, LocalRedisCluster

HEARTBEAT = 1.0


@pytest.fixture
async def client(local_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    """For looking at the keys (text replies)."""
    connection = cluster.create_client(local_cluster.url, decode_responses=True)
    await connection.initialize()
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
async def gateway_client(local_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    """The registry's own client, as the gateway makes it (bytes replies)."""
    connection = cluster.create_client(local_cluster.url)
    await connection.initialize()
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def new_registry(gateway_client: RedisCluster) -> Callable[[], Registry]:
    """Factory: the registry of one more gateway instance."""

    def make() -> Registry:
        registry = create_registry(gateway_client, uuid.uuid4().hex[:12], HEARTBEAT)
        assert isinstance(registry, ClusterRegistry)
        return registry

    return make


async def test_attach_and_detach_keep_the_seed_keys_exact(
    client: RedisCluster, new_registry: Callable[[], Registry]
) -> None:
    """Attach fills `ws:session:<id>`, `user:sessions:<id>` and the instance's hash (different
    slots); detaching the last connection of a session empties all three."""
    registry = new_registry()
    user, s1, s2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await registry.attach("c1", s1, user, 5)
    assert await registry.attach("c2", s1, user, 5)
    assert await registry.attach("c3", s2, user, 5)
    assert await client.smembers(keys.ws_session(s1)) == {"c1", "c2"}
    assert await client.smembers(keys.user_sessions(user)) == {str(s1), str(s2)}
    own = keys.gateway_connections(registry.instance_id)
    assert await client.hgetall(own) == {
        "c1": f"{s1} {user}",
        "c2": f"{s1} {user}",
        "c3": f"{s2} {user}",
    }
    assert 0 < await client.pttl(keys.user_sessions(user)) <= HEARTBEAT * 3000
    await registry.detach("c1", s1, user)
    assert await client.smembers(keys.user_sessions(user)) == {str(s1), str(s2)}
    await registry.detach("c2", s1, user)
    await registry.detach("c2", s1, user)  # idempotent
    assert not await client.exists(keys.ws_session(s1))
    assert await client.smembers(keys.user_sessions(user)) == {str(s2)}
    await registry.detach("c3", s2, user)
    assert not await client.exists(keys.user_sessions(user))
    assert not await client.exists(own)


async def test_cap_holds_under_concurrent_attaches_from_two_instances(
    client: RedisCluster, new_registry: Callable[[], Registry]
) -> None:
    """Twelve simultaneous attaches to one session from two instances: exactly five succeed."""
    a, b = new_registry(), new_registry()
    user, session = uuid.uuid4(), uuid.uuid4()
    results = await asyncio.gather(
        *((a, b)[i % 2].attach(f"c{i}", session, user, 5) for i in range(12))
    )
    assert results.count(True) == 5
    assert await client.scard(keys.ws_session(session)) == 5
    assert await a.session_count(session) == 5


async def test_dead_instance_is_swept(
    client: RedisCluster, new_registry: Callable[[], Registry]
) -> None:
    """An instance whose beat expired loses its entries at the next sweep of a live one; the live
    one's entries of the same session stay."""
    dead, alive = new_registry(), new_registry()
    user, session = uuid.uuid4(), uuid.uuid4()
    await dead.beat([])
    await dead.attach("d1", session, user, 5)
    await dead.attach("d2", session, user, 5)
    await alive.attach("a1", session, user, 5)
    await alive.beat([("a1", str(session), str(user))])
    assert await client.scard(keys.ws_session(session)) == 3
    await client.delete(keys.gateway_alive(dead.instance_id))  # its beat expired
    await alive.sweep()
    assert await client.smembers(keys.ws_session(session)) == {"a1"}
    assert await client.smembers(keys.user_sessions(user)) == {str(session)}
    assert not await client.exists(keys.gateway_connections(dead.instance_id))
    assert not await client.sismember(keys.GATEWAY_INSTANCES, dead.instance_id)
    await alive.leave()
    assert not await client.exists(keys.ws_session(session))
    assert not await client.exists(keys.user_sessions(user))


async def test_beat_heals_a_session_lost_from_its_user_set(
    client: RedisCluster, new_registry: Callable[[], Registry]
) -> None:
    """The race cluster mode allows: instance A's last detach sees the session empty, B attaches
    the same session, then A removes it from the user's set. B's next beat puts it back, and
    refreshes the expiry of every key B holds."""
    a, b = new_registry(), new_registry()
    user, session = uuid.uuid4(), uuid.uuid4()
    await a.attach("a1", session, user, 5)
    # A's detach, interleaved by hand: the session is empty ...
    await client.srem(keys.ws_session(session), "a1")
    # ... B attaches it ...
    await b.attach("b1", session, user, 5)
    # ... and A finishes its detach.
    await client.srem(keys.user_sessions(user), str(session))
    assert not await client.exists(keys.user_sessions(user))
    await client.pexpire(keys.ws_session(session), 500)
    await b.beat([("b1", str(session), str(user))])
    assert await client.smembers(keys.user_sessions(user)) == {str(session)}
    assert await client.pttl(keys.ws_session(session)) > 1000
    assert await client.pttl(keys.user_sessions(user)) > 1000
    await a.leave()
    await b.leave()


async def test_presumed_dead_instance_rewrites_its_entries(
    client: RedisCluster, new_registry: Callable[[], Registry]
) -> None:
    """An instance swept while it still lives (a long stall) writes its entries back on its
    next beat."""
    stalled, other = new_registry(), new_registry()
    user, session = uuid.uuid4(), uuid.uuid4()
    held = [("s1", str(session), str(user))]
    await stalled.beat([])
    await stalled.attach("s1", session, user, 5)
    await client.delete(keys.gateway_alive(stalled.instance_id))
    await other.sweep()
    assert not await client.exists(keys.ws_session(session))
    await stalled.beat(held)
    assert await client.smembers(keys.ws_session(session)) == {"s1"}
    assert await client.smembers(keys.user_sessions(user)) == {str(session)}
    assert await stalled.connection_count() >= 1
    await stalled.leave()


async def test_active_sessions_scans_every_primary(
    client: RedisCluster, new_registry: Callable[[], Registry], local_cluster: LocalRedisCluster
) -> None:
    """Sessions whose keys live on all three primaries are all listed."""
    registry = new_registry()
    user = uuid.uuid4()
    sessions = [uuid.uuid4() for _ in range(24)]
    for n, session in enumerate(sessions):
        await registry.attach(f"c{n}", session, user, 5)
    owners = {local_cluster.owner_of(client.keyslot(keys.ws_session(s)) % SLOTS) for s in sessions}
    assert owners == {0, 1, 2}
    assert set(sessions) <= set(await registry.active_sessions())
    await registry.leave()
    assert not set(sessions) & set(await registry.active_sessions())


async def test_attach_checks_the_remembered_owner_first(
    client: RedisCluster, new_registry: Callable[[], Registry]
) -> None:
    """With `owner_check`, only the owner Redis remembers is registered; anyone else, or an
    unknown session, gets `OWNER_UNCONFIRMED` and leaves nothing behind."""
    registry = new_registry()
    owner, intruder, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert await registry.attach("c1", session, owner, 5, owner_check=True) == OWNER_UNCONFIRMED
    await client.set(keys.session_owner(session), str(owner))
    assert await registry.attach("c2", session, intruder, 5, owner_check=True) == (
        OWNER_UNCONFIRMED
    )
    assert not await client.exists(keys.ws_session(session))
    assert await registry.attach("c3", session, owner, 5, owner_check=True) == ATTACHED
    assert await client.smembers(keys.ws_session(session)) == {"c3"}
