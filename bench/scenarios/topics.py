"""Topic scenarios against one gateway (docs/topics.md):

a. one topic, many subscribers (`topic_subscribers`; 10,000 at full scale): publications spaced
   out, each carrying its publish time; per publication, the time until the *last* subscriber has
   it (p50/p99), and per delivery the latency (p50/p99); lost deliveries counted;
b. many small topics (`topic_groups` topics x `topic_group_size` subscribers; 1,000 x 10 at full
   scale) at rising publication rates (`topic_rates`), publications spread over the topics; per
   rate: delivered, lost, latency p50/p99.

Publications go through the same Lua script as `POST /internal/v1/topics/{topic}/publications`
(`shared.topic_store`), from the load side, so the measure is the gateway's fan-out and not the
benchmark's HTTP client. The subscribers are asyncio WebSocket clients in the benchmark process
(on the load cores), one user each.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as redis
from websockets.asyncio.client import ClientConnection, connect

from bench import stats
from bench.scale import Scale
from shared.auth import mint_token
from shared.settings import Settings
from shared.topic_store import TopicStore
from shared.topics import DEFAULT_NAMESPACES

# The scenarios' namespace: `public`'s history and presence, without join/leave events. With them,
# every subscriber joining a topic of N is announced to the N already there: N^2/2 frames before
# the first publication (50 million for 10,000 subscribers), which measures the announcements,
# not the publications (docs/topics.md, "Join and leave").
NAMESPACE_NAME = "feed"
NAMESPACE = msgspec.structs.replace(DEFAULT_NAMESPACES["public"], join_leave=False)
GATEWAY_ENV = {"TOPIC_NAMESPACES": json.dumps({NAMESPACE_NAME: msgspec.to_builtins(NAMESPACE)})}
QUIET_SECONDS = 3.0
CONNECT_TIMEOUT = 30.0
CONNECT_ATTEMPTS = 3


class Subscriber:
    """One connection subscribed to one topic; records (offset, latency ns) of publications."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[tuple[int, int]] = []
        self.last_arrival = 0.0
        self.task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for raw in self.ws:
            now = time.time()
            frame = json.loads(raw)
            if frame.get("type") == "publication":
                sent = frame["data"]["ts"]
                self.seen.append((frame["offset"], int((now - sent) * 1e9)))
                self.last_arrival = now


async def _connect(url: str) -> ClientConnection:
    """Open one connection, retrying a handshake that timed out: thousands of handshakes queue
    on one gateway core, and a slow one is not a failed subscriber."""
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            return await connect(url, compression=None, open_timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _subscribe(
    base: str, settings: Settings, topic: str, limit: asyncio.Semaphore
) -> Subscriber:
    async with limit:
        token = mint_token(settings, uuid.uuid4(), ttl=3600)
        ws = await _connect(f"{base}/api/v1/ws/{uuid.uuid4()}?token={token}")
        greeting = json.loads(await ws.recv())
        assert greeting["type"] == "connection_established", greeting
        await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
        while True:
            answer = json.loads(await ws.recv())
            if answer.get("type") == "subscribed":
                break
            if answer.get("type") == "error":
                raise RuntimeError(f"subscribe refused: {answer}")
    subscriber = Subscriber(ws)
    subscriber.task = asyncio.create_task(subscriber.read())
    return subscriber


async def _drain(subscribers: Sequence[Subscriber], expected: int) -> None:
    """Wait until every expected delivery arrived, or nothing arrived for QUIET_SECONDS."""
    while True:
        if sum(len(s.seen) for s in subscribers) >= expected:
            return
        last = max((s.last_arrival for s in subscribers), default=0.0)
        if last and time.time() - last > QUIET_SECONDS:
            return
        await asyncio.sleep(0.1)


async def _close(subscribers: Sequence[Subscriber]) -> None:
    for subscriber in subscribers:
        if subscriber.task is not None:
            subscriber.task.cancel()
    await asyncio.gather(*(s.ws.close() for s in subscribers), return_exceptions=True)


async def _publish(store: TopicStore, topic: str) -> None:
    data = msgspec.json.encode({"ts": time.time()})
    await store.publish(topic, NAMESPACE, data, now=time.time())


async def one_topic(
    base: str, store: TopicStore, settings: Settings, scale: Scale
) -> dict[str, Any]:
    topic = f"{NAMESPACE_NAME}:bench-{uuid.uuid4().hex[:8]}"
    limit = asyncio.Semaphore(scale.connect_concurrency)
    started = time.monotonic()
    subscribers = await asyncio.gather(
        *(_subscribe(base, settings, topic, limit) for _ in range(scale.topic_subscribers))
    )
    connect_s = time.monotonic() - started
    try:
        for _ in range(scale.topic_publications):
            await _publish(store, topic)
            await asyncio.sleep(0.2)  # one at a time: the time to the last subscriber alone
        expected = scale.topic_publications * len(subscribers)
        await _drain(subscribers, expected)
        last_by_offset: dict[int, int] = {}
        deliveries: list[int] = []
        for subscriber in subscribers:
            for offset, latency in subscriber.seen:
                deliveries.append(latency)
                last_by_offset[offset] = max(last_by_offset.get(offset, 0), latency)
        return {
            "subscribers": len(subscribers),
            "publications": scale.topic_publications,
            "connect_seconds": round(connect_s, 2),
            "delivered": len(deliveries),
            "lost": expected - len(deliveries),
            "to_last_subscriber": stats.summarize(list(last_by_offset.values())),
            "per_delivery": stats.summarize(deliveries),
        }
    finally:
        await _close(subscribers)


async def many_topics(
    base: str, store: TopicStore, settings: Settings, scale: Scale
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    topics = [f"{NAMESPACE_NAME}:bench-{run}-{n}" for n in range(scale.topic_groups)]
    limit = asyncio.Semaphore(scale.connect_concurrency)
    subscribers = await asyncio.gather(
        *(
            _subscribe(base, settings, topic, limit)
            for topic in topics
            for _ in range(scale.topic_group_size)
        )
    )
    steps: list[dict[str, Any]] = []
    try:
        for rate in scale.topic_rates:
            for s in subscribers:
                s.seen.clear()
            count = max(1, int(rate * scale.step_seconds))
            interval = 1.0 / rate
            begin = time.monotonic()
            for n in range(count):
                delay = begin + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await _publish(store, topics[n % len(topics)])
            offered = count / max(1e-9, time.monotonic() - begin)
            expected = count * scale.topic_group_size
            await _drain(subscribers, expected)
            deliveries = [latency for s in subscribers for _, latency in s.seen]
            steps.append(
                {
                    "rate": rate,
                    "offered_per_s": round(offered, 1),
                    "publications": count,
                    "delivered": len(deliveries),
                    "lost": expected - len(deliveries),
                    "latency": stats.summarize(deliveries),
                }
            )
        return {"topics": len(topics), "subscribers": len(subscribers), "steps": steps}
    finally:
        await _close(subscribers)


async def _run(port: int, redis_url: str, settings: Settings, scale: Scale) -> dict[str, Any]:
    base = f"ws://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    store = TopicStore(client)
    try:
        return {
            "one_topic": await one_topic(base, store, settings, scale),
            "many_topics": await many_topics(base, store, settings, scale),
        }
    finally:
        await client.aclose()


def run(port: int, redis_url: str, settings: Settings, scale: Scale) -> dict[str, Any]:
    """Both scenarios against the gateway on `port`."""
    return asyncio.run(_run(port, redis_url, settings, scale))


def report_lines(result: dict[str, Any]) -> list[str]:
    """Markdown for bench/REPORT.md."""
    one = result["one_topic"]
    many = result["many_topics"]
    lines = [
        "## Topics",
        "",
        f"One topic, {one['subscribers']:,} subscribers, {one['publications']} publications "
        f"(connected in {one['connect_seconds']} s): publication to the last subscriber "
        f"p50 {one['to_last_subscriber']['p50_ms']} ms, p99 {one['to_last_subscriber']['p99_ms']} "
        f"ms; per delivery p50 {one['per_delivery']['p50_ms']} ms, p99 "
        f"{one['per_delivery']['p99_ms']} ms; {one['lost']} lost.",
        "",
        f"{many['topics']:,} topics x {many['subscribers'] // max(1, many['topics'])} subscribers:",
        "",
        "| publications/s offered | delivered | lost | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for step in many["steps"]:
        lines.append(
            f"| {step['offered_per_s']:,} | {step['delivered']:,} | {step['lost']:,} | "
            f"{step['latency']['p50_ms']} | {step['latency']['p99_ms']} |"
        )
    return [*lines, ""]
