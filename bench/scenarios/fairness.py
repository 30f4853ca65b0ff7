"""e. Fair queue: user B's time to first token while user A floods the chat, before and after.

One agent worker (so a queue forms), the fake model at the chat scenario's pacing. User A asks
`fair_flood` questions at once; once the gateway has accepted every one of them (each POST has
its `200`: admitted to the stream or to A's queue), user B asks one question. Reported: B's
time to first token, and how many of A's answers had started before B's first token, for two
settings of every service:

- `fifo`: `CHAT_MAX_STREAMING_PER_USER` and `CHAT_MAX_QUEUED_PER_USER` as large as the flood,
  which is the stream's old first-come-first-served order: B waits for all of A's questions;
- `fair`: the defaults (1 in the stream per user): B waits for at most A's answer in progress.

The orchestration (a gateway and a worker process per mode, with that mode's settings) is in
`bench.run`; this module asks and measures.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import uvloop

from bench.httpclient import HttpConnection
from bench.progress import Progress
from bench.scale import Scale
from bench.scenarios.chat import (
    STREAM_TIMEOUT,
    StreamResult,
    _read_event,
    one_stream,
    wait_for_workers,
)
from shared.auth import mint_token
from shared.settings import Settings

STEPS = 2  # one per mode
MODES = ("fifo", "fair")


def mode_env(mode: str, scale: Scale) -> dict[str, str]:
    """The settings every service of the mode runs with."""
    if mode == "fifo":
        room = str(scale.fair_flood + 1)
        return {"CHAT_MAX_STREAMING_PER_USER": room, "CHAT_MAX_QUEUED_PER_USER": room}
    return {"CHAT_MAX_STREAMING_PER_USER": "1", "CHAT_MAX_QUEUED_PER_USER": str(scale.fair_flood)}


async def _flood_then_ask(port: int, flooder: str, other: str, flood: int) -> dict[str, Any]:
    started = time.monotonic_ns()
    accepted = [asyncio.Event() for _ in range(flood)]
    token_at: list[int] = []  # A's answers' first-token moments (monotonic ns)
    floods = [
        asyncio.create_task(_watched(port, flooder, f"flood {i}", accepted[i], token_at))
        for i in range(flood)
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in accepted)), 60)
    asked = time.monotonic_ns()
    mine = await one_stream(port, other, "a question of my own")
    answered = asked + (mine.first_token_ns or 0)
    results = await asyncio.gather(*floods)
    return {
        "b_first_token_ms": round((mine.first_token_ns or 0) / 1e6, 1),
        "a_answers_started_before_b": sum(1 for t in token_at if t < answered),
        "a_completed": sum(1 for r in results if r.ended == "end"),
        "b_completed": mine.ended == "end",
        "seconds": round((time.monotonic_ns() - started) / 1e9, 3),
    }


async def _watched(
    port: int, token: str, question: str, accepted: asyncio.Event, token_at: list[int]
) -> StreamResult:
    """`one_stream` that sets `accepted` once the gateway answered the POST (any status) and
    notes when the first token arrived."""
    result = StreamResult()
    conn = HttpConnection("127.0.0.1", port)
    body = json.dumps({"message": question}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sent = time.monotonic_ns()
    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            result.status, pieces = await conn.stream("POST", "/api/v1/chat/stream", headers, body)
            accepted.set()
            buffer = b""
            async for piece in pieces:
                now = time.monotonic_ns()
                buffer += piece
                *events, buffer = buffer.split(b"\n\n")
                for raw in events:
                    if _read_event(raw, now, sent, result):
                        break
                if result.ended:
                    break
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        accepted.set()
        conn.close()
    if result.first_token_ns is not None:
        token_at.append(sent + result.first_token_ns)
    return result


def run(
    mode: str, scale: Scale, settings: Settings, gateway_port: int, progress: Progress
) -> dict[str, Any]:
    """One mode's measurement against a gateway and one worker started with `mode_env`."""
    wait_for_workers(settings, 1)
    flooder = mint_token(settings, uuid.uuid4(), ttl=3600)
    other = mint_token(settings, uuid.uuid4(), ttl=3600)
    report = uvloop.run(_flood_then_ask(gateway_port, flooder, other, scale.fair_flood))
    report |= {"mode": mode, "flood": scale.fair_flood}
    progress.step(
        f"fairness {mode}: B's first token after {report['b_first_token_ms']:.0f} ms, "
        f"{report['a_answers_started_before_b']} of A's {scale.fair_flood} answers before it"
    )
    return report
