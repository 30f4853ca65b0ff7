"""`shared.consumer_group` against a real Redis: idempotent creation, NOGROUP recognised, and
only idle consumers without pending entries pruned."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as redis

from shared import consumer_group


async def test_ensure_group_is_idempotent(client: redis.Redis) -> None:
    """Creating the group twice is fine; it creates the stream too."""
    stream = f"test:cg:{uuid.uuid4()}"
    await consumer_group.ensure_group(client, stream, "g")
    await consumer_group.ensure_group(client, stream, "g")
    groups = await client.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [b"g"]
    await client.delete(stream)


async def test_nogroup_is_recognised(client: redis.Redis) -> None:
    """A read from a group that does not exist fails with an error `is_nogroup` recognises."""
    stream = f"test:cg:{uuid.uuid4()}"
    with pytest.raises(redis.ResponseError) as caught:
        await client.xreadgroup("missing", "c", {stream: ">"}, count=1)
    assert consumer_group.is_nogroup(caught.value)
    assert not consumer_group.is_nogroup(redis.ResponseError("WRONGTYPE"))


async def test_prune_removes_idle_consumers_without_pending(client: redis.Redis) -> None:
    """With a threshold nobody reaches, nothing is pruned; with one everybody passes, the
    consumers holding no pending entry are pruned and the one holding an entry stays. (The idle
    threshold is the only clock involved, so the test sets it rather than waits.)"""
    stream = f"test:cg:{uuid.uuid4()}"
    await consumer_group.ensure_group(client, stream, "g")
    await client.xadd(stream, {"n": "1"})
    await client.xreadgroup("g", "holder", {stream: ">"}, count=1)  # keeps the entry pending
    await client.xgroup_createconsumer(stream, "g", "gone")  # a consumer that holds nothing
    assert await consumer_group.prune_consumers(client, stream, "g", max_idle_ms=3_600_000) == []
    removed = await consumer_group.prune_consumers(client, stream, "g", max_idle_ms=-1)
    assert removed == ["gone"]
    left = {c["name"] for c in await client.xinfo_consumers(stream, "g")}
    assert left == {b"holder"}
    await client.delete(stream)
