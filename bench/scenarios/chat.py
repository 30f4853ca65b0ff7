"""d. Chat: `chat_streams` concurrent `POST /api/v1/chat/stream` SSE streams through the gateway,
the agent and Redis streams, against the fake model (`bench.fake_model`) at fixed pacing.

Reported: time to first token (request sent to first `token` event's arrival, which includes the
model's own first-token delay of one pacing interval), the latency the whole pipeline adds to each
token (arrival at the client minus the moment the fake model wrote it; both are CLOCK_MONOTONIC),
and what the gateway adds: arrival of each `token` event minus the moment the agent worker wrote
it to its reply stream. That moment is the event's `event_id`, the Redis stream entry id, whose
first part is Redis's wall clock in milliseconds when the XADD ran; the entry was written no
earlier than that millisecond nor than the model wrote its last delta, so arrival minus the later
of the two is an upper bound on the gateway's share (at most 1 ms above it). The agent workers
run on the load core, as in production where they are other pods: their own backlog shows in
the pipeline figure, not in the gateway's. "Arrival" is when the bytes reached this client's
socket, as the kernel stamped them (`bench.arrivals`), not when this client — one process reading
every stream on the shared load core — got round to reading them; that delay is reported apart
(`client_read_delay`), as the part of the old figures that was the client's.
The Redis floor (`bench.redis_probe`): the same measurement of a probe stream read straight from
Redis by this client, no gateway in between, in the same seconds; the gateway's own share is the
gap between the two.
Every stream must end with `end`; tokens received (the model's deltas, counted by their stamps:
one `token` event may carry several deltas that were written together) are checked against
tokens sent, and `token` events are counted apart. Streams start once every agent worker has
announced itself (`chat:workers`), so worker start-up is not measured as latency; the CPU of
every process of the pipeline and of the load side (fake model, Redis, this client) is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any

import redis
import uvloop

from bench import redis_probe, stats, system
from bench.fake_model import stamps
from bench.httpclient import timed_stream
from bench.progress import Progress
from bench.scale import Scale
from shared import keys
from shared.auth import mint_token
from shared.settings import Settings

STEPS = 1
STREAM_TIMEOUT = 60.0
WORKERS_TIMEOUT = 120.0  # agent processes importing the SDK on a busy core are slow to start


@dataclass
class StreamResult:
    status: int = 0
    first_token_ns: int | None = None
    tokens: int = 0  # model deltas received
    events: int = 0  # `token` events received
    ended: str = ""  # "end", "error" or "" (cut off)
    added_ns: array[int] = field(default_factory=lambda: array("q"))
    gateway_ns: array[int] = field(default_factory=lambda: array("q"))  # per `token` event
    client_ns: array[int] = field(default_factory=lambda: array("q"))  # per piece: read - arrival
    unstamped: int = 0  # pieces that came without the kernel's stamp (arrival: when read)
    error: str = ""


async def one_stream(
    port: int, token: str, question: str, flowing: asyncio.Event | None = None
) -> StreamResult:
    """Ask one question and read its SSE answer to the end; sets `flowing` at its first
    `token` event."""
    result = StreamResult()
    body = json.dumps({"message": question}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sent = time.monotonic_ns()
    wall_offset = time.time_ns() - time.monotonic_ns()
    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            result.status, pieces = await timed_stream(
                "127.0.0.1", port, "POST", "/api/v1/chat/stream", headers, body
            )
            async with contextlib.aclosing(pieces):
                buffer = b""
                async for piece, stamp in pieces:
                    # Arrival: when the piece reached the socket (the kernel's stamp), not when
                    # this client, busy with 200 streams on a shared core, got round to it.
                    if stamp:
                        now = stamp - wall_offset
                        result.client_ns.append(time.time_ns() - stamp)  # one clock: the wall's
                    else:
                        now = time.monotonic_ns()
                        result.unstamped += 1
                    buffer += piece
                    *events, buffer = buffer.split(b"\n\n")
                    for raw in events:
                        if _read_event(raw, now, sent, result, wall_offset):
                            return result
                    if flowing is not None and result.first_token_ns is not None:
                        flowing.set()
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _read_event(
    raw: bytes, now: int, sent: int, result: StreamResult, wall_offset: int = 0
) -> bool:
    """Account one SSE event (`now`, `sent`: monotonic ns; `wall_offset`: wall clock minus
    monotonic clock, ns); True when it ends the stream."""
    for line in raw.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])
        kind = event.get("type")
        if kind == "token":
            result.events += 1
            if result.first_token_ns is None:
                result.first_token_ns = now - sent
            written = stamps(str(event.get("content", "")).encode())
            for stamp in written:
                result.tokens += 1
                result.added_ns.append(now - stamp)
            entry_ms = str(event.get("event_id", "")).partition("-")[0]
            if entry_ms.isdigit():
                stored = int(entry_ms) * 1_000_000 - wall_offset  # on the monotonic clock
                result.gateway_ns.append(now - max([stored, *written]))
        elif kind in ("end", "error"):
            result.ended = kind
            if kind == "error":
                result.error = json.dumps(event.get("error", event))[:200]
            return True
    return False


async def _all_streams(
    port: int, tokens: list[str], probe: tuple[str, str] | None
) -> tuple[list[StreamResult], float, array[int]]:
    """Every stream to its end; with `probe` (Redis URL, key), also the Redis floor
    (`bench.redis_probe`) from the first token event anywhere until the last stream ends."""
    flowing, done = asyncio.Event(), asyncio.Event()
    floor = asyncio.create_task(redis_probe.read_floor(*probe, flowing, done)) if probe else None
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            one_stream(port, token, f"benchmark question {i}", flowing)
            for i, token in enumerate(tokens)
        )
    )
    seconds = time.monotonic() - started
    done.set()
    return list(results), seconds, await floor if floor is not None else array("q")


def wait_for_workers(settings: Settings, count: int, timeout: float = WORKERS_TIMEOUT) -> float:
    """Wait until `count` agent workers have sent a heartbeat; returns the seconds waited.
    Raises `TimeoutError` if they do not within `timeout`."""
    client = redis.Redis.from_url(settings.redis_url)
    started = time.monotonic()
    try:
        while client.zcount(keys.CHAT_WORKERS, time.time() - 10, "+inf") < count:
            if time.monotonic() > started + timeout:
                raise TimeoutError(f"fewer than {count} agent workers after {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        client.close()
    return time.monotonic() - started


def run(
    scale: Scale,
    settings: Settings,
    gateway_port: int,
    pids: dict[str, int],
    progress: Progress,
    probe_key: str | None = None,
) -> dict[str, Any]:
    """`pids`: the processes whose CPU is reported, by name (this client is added);
    `probe_key`: the stream a `bench.redis_probe` writer appends to (the floor), if one runs."""
    wait_for_workers(settings, scale.chat_streams)
    tokens = [mint_token(settings, uuid.uuid4(), ttl=3600) for _ in range(scale.chat_streams)]
    meters = {
        name: system.CpuMeter([pid]) for name, pid in (pids | {"client": os.getpid()}).items()
    }
    for meter in meters.values():
        meter.start()
    probe = (settings.redis_url, probe_key) if probe_key else None
    results, seconds, floor = uvloop.run(_all_streams(gateway_port, tokens, probe))
    cpu = {name: round(meter.stop(), 3) for name, meter in meters.items()}
    first = [r.first_token_ns for r in results if r.first_token_ns is not None]
    added: array[int] = array("q")
    gateway: array[int] = array("q")
    client: array[int] = array("q")
    for r in results:
        added.extend(r.added_ns)
        gateway.extend(r.gateway_ns)
        client.extend(r.client_ns)
    errors: dict[str, int] = {}
    for r in results:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    first_token, per_token = stats.summarize(first), stats.summarize(added)
    gateway_added = stats.summarize(gateway)
    report: dict[str, Any] = {
        "streams": scale.chat_streams,
        "tokens_per_answer": scale.chat_tokens,
        "token_interval_ms": scale.chat_token_interval * 1000,
        "completed": sum(1 for r in results if r.ended == "end"),
        "tokens_expected": scale.chat_streams * scale.chat_tokens,
        "tokens_received": sum(r.tokens for r in results),
        "token_events": sum(r.events for r in results),
        "statuses": sorted({r.status for r in results}),
        "errors": errors,
        "seconds": round(seconds, 3),
        "time_to_first_token": first_token,
        "added_per_token": per_token,
        "added_per_token_cdf": stats.cdf(added),
        "gateway_added_per_token": gateway_added,
        "redis_floor_per_entry": stats.summarize(floor) if floor else None,
        # How long the client took to read what had reached its socket: in none of the above.
        "client_read_delay": stats.summarize(client),
        "unstamped_pieces": sum(r.unstamped for r in results),
        "cpu": cpu,
    }
    progress.step(
        f"chat {scale.chat_streams} streams: {report['completed']} completed, first token p50 "
        f"{first_token['p50_ms']:.1f} / p99 {first_token['p99_ms']:.1f} ms, added per token "
        f"p50 {per_token['p50_ms']:.2f} / p99 {per_token['p99_ms']:.2f} ms, by the gateway "
        f"p50 {gateway_added['p50_ms']:.2f} / p99 {gateway_added['p99_ms']:.2f} ms"
    )
    return report
