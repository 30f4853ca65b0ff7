"""The `notifications:ingest` stream consumer against a real service and Redis: valid entries
become notifications (once), invalid ones land in the dead-letter stream with their reason."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from notifications_svc.ingest import CLAIM_IDLE_MS, MAX_ATTEMPTS, InvalidEntry, parse_entry
from shared import keys
from shared.infra import EmbeddedRedis
from shared.settings import Settings
from tests.conftest import SpawnService
from tests.notifications_svc.conftest import payload

Auth = Callable[[uuid.UUID], dict[str, str]]


@pytest.fixture
async def rds(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def _listed(
    http: httpx.AsyncClient, headers: dict[str, str], count: int, timeout: float = 15
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items: list[dict[str, Any]] = (
            await http.get("/api/v1/notifications", headers=headers)
        ).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.1)


async def _dead_entry(
    rds: redis.Redis, source_id: bytes | str, timeout: float = 15
) -> dict[bytes, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await rds.xrevrange(
            keys.NOTIFICATIONS_DEAD_LETTER_STREAM, count=200
        )  # type: ignore[assignment]  # bytes: the client does not decode responses
        for _, fields in entries:
            if fields.get(b"dead_source_id") == source_id:
                return dict(fields)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{source_id!r} never reached the dead-letter stream")


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence)


async def _processed(rds: redis.Redis, *entry_ids: bytes | str, timeout: float = 15) -> None:
    """Wait until the group has delivered and acknowledged every one of `entry_ids`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = await rds.xinfo_groups(keys.NOTIFICATIONS_INGEST_STREAM)
        [group] = [g for g in groups if g["name"] == keys.NOTIFICATIONS_INGEST_GROUP.encode()]
        delivered = _id(group["last-delivered-id"]) >= max(_id(i) for i in entry_ids)
        pending = await rds.xpending_range(
            keys.NOTIFICATIONS_INGEST_STREAM,
            keys.NOTIFICATIONS_INGEST_GROUP,
            min=min(entry_ids, key=_id),
            max=max(entry_ids, key=_id),
            count=1000,
        )
        if delivered and not {p["message_id"] for p in pending} & set(entry_ids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"entries {entry_ids!r} not acknowledged in {timeout}s")


async def test_entry_becomes_notification_and_is_acked(
    http: httpx.AsyncClient, rds: redis.Redis, auth: Auth
) -> None:
    """A valid entry is stored for its user (seq 1), and acknowledged after commit."""
    user = uuid.uuid4()
    body = payload(user, title="from the stream")
    entry_id = await rds.xadd(keys.NOTIFICATIONS_INGEST_STREAM, {"payload": json.dumps(body)})
    await _processed(rds, entry_id)
    [item] = await _listed(http, auth(user), 1)
    assert item["title"] == "from the stream"
    assert item["seq"] == 1


async def test_dedupe_key_makes_repeated_entries_one(
    http: httpx.AsyncClient, rds: redis.Redis, auth: Auth
) -> None:
    """Two entries with one dedupe_key (a producer retrying) create one notification."""
    user = uuid.uuid4()
    body = json.dumps(payload(user, dedupe_key="order-42-shipped"))
    entry_ids = [
        await rds.xadd(keys.NOTIFICATIONS_INGEST_STREAM, {"payload": body}) for _ in range(2)
    ]
    await _processed(rds, *entry_ids)
    items = await _listed(http, auth(user), 1)
    assert [(i["title"], i["seq"]) for i in items] == [("New Task Created", 1)]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"payload": "{not json"}, "not valid JSON"),
        ({"payload": '{"action": {"a": ' + "[" * 60_000}, "nested too deeply"),
        ({"something": "else"}, "missing field 'payload'"),
        ({"payload": json.dumps({"title": "no user"})}, "invalid notification"),
        ({"payload": json.dumps(payload(uuid.uuid4(), title="x" * 256))}, "invalid notification"),
        ({"payload": json.dumps(payload(uuid.uuid4(), content="nul \u0000"))}, "refused"),
        ({"payload": json.dumps(payload(uuid.uuid4(), content="x" * 70_000))}, "over 65536 bytes"),
    ],
)
async def test_invalid_entry_is_dead_lettered(
    rds: redis.Redis, fields: dict[str, str], reason: str
) -> None:
    """An entry that can never succeed moves to the dead-letter stream with its fields and the
    reason, and is acknowledged so it does not block the stream."""
    entry_id = await rds.xadd(keys.NOTIFICATIONS_INGEST_STREAM, fields)  # type: ignore[arg-type]
    dead = await _dead_entry(rds, entry_id)
    assert reason in dead[b"dead_reason"].decode()
    for name, value in fields.items():
        assert dead[name.encode()] == value.encode()
    await _processed(rds, entry_id)


async def test_entry_pending_on_a_dead_consumer_is_claimed(
    spawn_service: SpawnService, rds: redis.Redis, auth: Auth
) -> None:
    """An entry delivered to a consumer that died before acknowledging it is claimed by a live
    instance (its start-up sweep) and becomes a notification."""
    user = uuid.uuid4()
    body = json.dumps(payload(user, title="orphaned entry"))
    async with rds.pipeline(transaction=True) as pipe:
        # Atomically: append, deliver to a consumer that then "dies", and age the delivery past
        # the claim threshold, so no live instance can read it first.
        pipe.xadd(keys.NOTIFICATIONS_INGEST_STREAM, {"payload": body})
        pipe.xreadgroup(
            keys.NOTIFICATIONS_INGEST_GROUP,
            "ghost",
            {keys.NOTIFICATIONS_INGEST_STREAM: ">"},
            count=1,
        )
        entry_id, _ = await pipe.execute()
    await rds.xclaim(
        keys.NOTIFICATIONS_INGEST_STREAM,
        keys.NOTIFICATIONS_INGEST_GROUP,
        "ghost",
        min_idle_time=0,
        message_ids=[entry_id],
        idle=CLAIM_IDLE_MS * 2,
    )
    service = spawn_service("notifications_svc")
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            await _processed(rds, entry_id)
            items = await _listed(http, auth(user), 1)
        assert [i["title"] for i in items] == ["orphaned entry"]
    finally:
        service.stop()


def test_parse_entry_defaults_dedupe_key_to_entry_id() -> None:
    """Without a producer dedupe_key, the entry id is the key, so a redelivery is a no-op."""
    user = uuid.uuid4()
    request = parse_entry(b"1-0", {b"payload": json.dumps(payload(user)).encode()}, 65536)
    assert request.dedupe_key == "ingest:1-0"
    keyed = parse_entry(
        b"1-0", {b"payload": json.dumps(payload(user, dedupe_key="k")).encode()}, 65536
    )
    assert keyed.dedupe_key == "k"
    with pytest.raises(InvalidEntry, match="payload"):
        parse_entry(b"1-0", {}, 65536)


async def test_entry_failing_every_time_is_dead_lettered_and_unblocks_the_stream(
    spawn_service: SpawnService,
    private_database: str,
    private_redis: EmbeddedRedis,
    token_for: Callable[..., str],
) -> None:
    """An entry that fails with an unexpected error on every attempt (here a trigger raising
    for it) is dead-lettered after MAX_ATTEMPTS, and the entries behind it are then ingested."""
    service = spawn_service(
        "notifications_svc", DATABASE_URL=private_database, REDIS_URL=private_redis.url
    )
    database = await asyncpg.connect(private_database)
    try:
        await database.execute(
            """
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.title = 'poison' THEN RAISE EXCEPTION 'poison refused'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON notifications.notifications
            FOR EACH ROW EXECUTE FUNCTION refuse_poison();
            """
        )
    finally:
        await database.close()
    user = uuid.uuid4()
    client = redis.Redis.from_url(private_redis.url)
    try:
        poison = await client.xadd(
            keys.NOTIFICATIONS_INGEST_STREAM, {"payload": json.dumps(payload(user, title="poison"))}
        )
        healthy = await client.xadd(
            keys.NOTIFICATIONS_INGEST_STREAM, {"payload": json.dumps(payload(user, title="fine"))}
        )
        dead = await _dead_entry(client, poison, timeout=30)
        assert dead[b"dead_reason"].decode().startswith(f"failed {MAX_ATTEMPTS} times")
        assert "poison refused" in dead[b"dead_reason"].decode()
        await _processed(client, poison, healthy)
        headers = {"Authorization": f"Bearer {token_for(user)}"}
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            items = await _listed(http, headers, 1)
        assert [i["title"] for i in items] == ["fine"]
    finally:
        await client.aclose()
        service.stop()
