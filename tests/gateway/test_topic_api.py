"""The topic HTTP endpoints on real gateways: internal publish (offsets, Idempotency-Key, size
and name refusals), the `topics:ingest` stream, and presence with subscribe's authorization."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis.asyncio as redis

from gateway import topic_api
from shared import keys
from shared.auth import mint_subscription_token
from shared.redis_client import create_client
from shared.settings import Settings
from shared.topic_store import TopicStore
from shared.topics import DEFAULT_NAMESPACES
from tests.gateway.conftest import INTERNAL, Cluster, eventually

Token = Callable[..., str]


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _topic(namespace: str = "public") -> str:
    return f"{namespace}:t-{uuid.uuid4().hex[:10]}"


async def _publish(base: str, topic: str, data: object, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{base}/internal/v1/topics/{topic}/publications",
            json={"data": data},
            headers=INTERNAL | headers,
        )


async def test_publish_answers_gapless_offsets_under_one_epoch(cluster: Cluster) -> None:
    """Two publications through two gateways get offsets 1 and 2 and the same epoch."""
    topic = _topic()
    first = await _publish(cluster.a.url, topic, {"n": 1})
    second = await _publish(cluster.b.url, topic, [1, 2])
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["offset"] == 1 and second.json()["offset"] == 2
    assert first.json()["epoch"] == second.json()["epoch"]


async def test_idempotency_key_publishes_once(cluster: Cluster) -> None:
    """A retry with the same Idempotency-Key answers 200 with the first position."""
    topic = _topic()
    first = await _publish(cluster.a.url, topic, 1, **{"Idempotency-Key": "abc"})
    retry = await _publish(cluster.b.url, topic, 1, **{"Idempotency-Key": "abc"})
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    assert (await _publish(cluster.a.url, topic, 2)).json()["offset"] == 2


@pytest.mark.parametrize(
    ("topic", "status", "code"),
    [
        ("nope:x", 404, "TOPIC_UNKNOWN_NAMESPACE"),
        ("public:a%20b", 422, "TOPIC_INVALID"),
        ("lobby", 422, "TOPIC_INVALID"),
    ],
)
async def test_publish_refuses_bad_topics(
    cluster: Cluster, topic: str, status: int, code: str
) -> None:
    """Unknown namespaces and malformed names are refused with their codes."""
    response = await _publish(cluster.a.url, topic, 1)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_publish_refuses_large_data_and_needs_the_internal_token(cluster: Cluster) -> None:
    """Data over TOPIC_MAX_PUBLICATION_BYTES answers 413; no internal token answers 401."""
    too_large = await _publish(cluster.a.url, _topic(), "x" * 20_000)
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "PUBLICATION_TOO_LARGE"
    async with httpx.AsyncClient() as client:
        anonymous = await client.post(
            f"{cluster.a.url}/internal/v1/topics/{_topic()}/publications", json={"data": 1}
        )
    assert anonymous.status_code == 401


async def test_ingest_stream_publishes_once(cluster: Cluster, redis_client: redis.Redis) -> None:
    """An entry added to topics:ingest is published by one gateway: the topic reaches offset 1
    and stays there."""
    topic = _topic()
    entry = json.dumps({"topic": topic, "data": {"via": "stream"}})
    await redis_client.xadd(keys.TOPICS_INGEST_STREAM, {"publication": entry})
    store = TopicStore(redis_client)
    namespace = DEFAULT_NAMESPACES["public"]

    async def published() -> bool:
        return (await store.recover(topic, namespace, None, 10)).position.offset >= 1

    await eventually(published)
    # The next publication is 2: the entry was not published twice.
    assert (await _publish(cluster.a.url, topic, 1)).json()["offset"] == 2


async def test_presence_endpoint_authorization(
    cluster: Cluster, token_for: Token, settings: Settings
) -> None:
    """Presence answers like subscribe: public for anyone signed in, another user's topic 403,
    a private topic only with its subscription token, nothing without a JWT."""
    me = uuid.uuid4()
    headers = {"authorization": f"Bearer {token_for(me)}"}
    private = _topic("private")
    async with httpx.AsyncClient(base_url=cluster.a.url, headers=headers) as client:
        public = await client.get(f"/api/v1/topics/{_topic()}/presence")
        assert public.status_code == 200
        assert public.json()["clients"] == [] and public.json()["total"] == 0
        other = await client.get(f"/api/v1/topics/user:{uuid.uuid4()}/presence")
        assert other.json()["error"]["code"] == "SUBSCRIBE_FORBIDDEN"
        own = await client.get(f"/api/v1/topics/user:{me}/presence")
        assert own.json()["error"]["code"] == "PRESENCE_DISABLED"  # `user` keeps none
        no_token = await client.get(f"/api/v1/topics/{private}/presence")
        assert no_token.json()["error"]["code"] == "TOPIC_TOKEN_REQUIRED"
        token = mint_subscription_token(settings, me, private)
        with_token = await client.get(
            f"/api/v1/topics/{private}/presence", headers={"x-topic-token": token}
        )
        assert with_token.status_code == 200
    async with httpx.AsyncClient(base_url=cluster.a.url) as client:
        assert (await client.get(f"/api/v1/topics/{_topic()}/presence")).status_code == 401
        internal = await client.get(f"/internal/v1/topics/{private}/presence", headers=INTERNAL)
        assert internal.status_code == 200


async def test_ingest_blocks_for_less_than_the_clients_socket_timeout(settings: Settings) -> None:
    """A blocking read on a quiet `topics:ingest` must return before the shared client gives up
    on the socket; otherwise every quiet period is logged as a failure and the consumer backs
    off."""
    client = create_client(settings)
    try:
        assert isinstance(client, redis.Redis)
        socket_timeout = client.connection_pool.connection_kwargs["socket_timeout"]
    finally:
        await client.aclose()
    assert socket_timeout / 2 > topic_api.INGEST_BLOCK_MS / 1000
