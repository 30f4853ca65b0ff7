"""HTTP endpoints of topics, and the `topics:ingest` stream consumer.

- `POST /internal/v1/topics/{topic}/publications` (internal token): body `{"data": <JSON>}`,
  optional `Idempotency-Key` header (1-128 printable characters; a retry with the same key
  answers the first publication's position and publishes nothing). Answers 201
  `{"offset", "epoch"}` (200 for a repeated key).
- `GET /api/v1/topics/{topic}/presence` (the user's JWT; for a token namespace the subscription
  token in `X-Topic-Token`): the same authorization as subscribing.
- `GET /internal/v1/topics/{topic}/presence` (internal token): no per-user rule.

Producers without HTTP `XADD topics:ingest * publication '{"topic", "data",
"idempotency_key"?}'`. Every gateway reads the stream in one consumer group, so each entry is
published once; `ingest:<entry id>` is the idempotency key when none is given, so an entry
retried after a gateway died between publishing and acknowledging it is not published twice.
An entry that can never be published (bad JSON, unknown namespace, too large) is logged and
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import msgspec
import redis.asyncio as redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.chat import _caller
from gateway.topics import TopicRefused, Topics
from shared import consumer_group, keys
from shared.backoff import Backoff
from shared.errors import Unavailable, ValidationFailed
from shared.http import json_response, read_json, require_internal
from shared.redis_client import RedisClient
from shared.topic_wire import PublishAnswer, PublishBody, decode_ingest

log = logging.getLogger(__name__)

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
INGEST_BATCH = 100
INGEST_BLOCK_MS = 2000  # below the client's socket timeout: a quiet stream is no error
INGEST_RECLAIM_IDLE_MS = 30_000  # entries a dead gateway took are published by another after


def _topics(request: Request) -> Topics:
    topics: Topics = request.app.state.topics
    return topics


async def publish(request: Request) -> Response:
    settings = request.app.state.settings
    require_internal(request, settings.internal_token)
    key = request.headers.get("idempotency-key")
    if key is not None and _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise ValidationFailed("Idempotency-Key: 1-128 printable ASCII characters")
    topics = _topics(request)
    topics.resolve(request.path_params["topic"])  # 404/422 before reading the body
    body = await read_json(request, PublishBody, settings.http_max_body_bytes)
    try:
        position, repeated = await topics.publish(request.path_params["topic"], body.data, key)
    except (redis.RedisError, OSError):
        raise Unavailable("Redis unavailable: not published") from None
    return json_response(PublishAnswer(position.offset, position.epoch), 200 if repeated else 201)


async def presence(request: Request) -> Response:
    """Public: the caller must be allowed to subscribe."""
    user_id = await _caller(request)
    topics = _topics(request)
    grant = await topics.authorize(
        request.path_params["topic"], user_id, request.headers.get("x-topic-token")
    )
    try:
        answer = await topics.presence(grant.topic, grant.namespace)
    except (redis.RedisError, OSError):
        raise Unavailable("Redis unavailable") from None
    return json_response(answer)


async def internal_presence(request: Request) -> Response:
    require_internal(request, request.app.state.settings.internal_token)
    topics = _topics(request)
    topic, namespace = topics.resolve(request.path_params["topic"])
    try:
        answer = await topics.presence(topic, namespace)
    except (redis.RedisError, OSError):
        raise Unavailable("Redis unavailable") from None
    return json_response(answer)


routes = [
    Route("/internal/v1/topics/{topic}/publications", publish, methods=["POST"]),
    Route("/internal/v1/topics/{topic}/presence", internal_presence, methods=["GET"]),
    Route("/api/v1/topics/{topic}/presence", presence, methods=["GET"]),
]


async def consume_ingest(client: RedisClient, topics: Topics, consumer: str) -> None:
    """Publish what producers add to `topics:ingest`, forever (cancel to stop). At least once
    per entry, made exactly once by the idempotency key."""
    stream, group = keys.TOPICS_INGEST_STREAM, keys.TOPICS_INGEST_GROUP
    backoff = Backoff(base=0.2, maximum=5.0)
    consumer = f"{consumer}@{socket.gethostname()}"
    while True:
        try:
            await consumer_group.ensure_group(client, stream, group)
            # Each gateway start is a new consumer name: drop those of gateways long gone.
            await consumer_group.prune_consumers(client, stream, group)
            while True:
                claimed: Any = await client.xautoclaim(
                    stream, group, consumer, INGEST_RECLAIM_IDLE_MS, "0", count=INGEST_BATCH
                )
                entries = list(claimed[1])
                read: Any = await client.xreadgroup(
                    group, consumer, {stream: ">"}, count=INGEST_BATCH, block=INGEST_BLOCK_MS
                )
                for _, batch in read or ():
                    entries.extend(batch)
                for entry_id, fields in entries:
                    await _ingest_one(topics, entry_id, fields)
                    await client.xack(stream, group, entry_id)
                backoff.reset()
        except (redis.RedisError, OSError) as exc:
            log.warning("topic ingest failed, retrying", extra={"error": repr(exc)})
            await backoff.sleep()
        except asyncio.CancelledError:
            raise


async def _ingest_one(topics: Topics, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
    try:
        entry = decode_ingest(fields.get(b"publication", b""))
        await topics.publish(
            entry.topic, entry.data, entry.idempotency_key or f"ingest:{entry_id.decode()}"
        )
    except (msgspec.DecodeError, TopicRefused) as exc:
        log.warning(
            "dropped a topic ingest entry", extra={"entry": entry_id.decode(), "error": str(exc)}
        )
