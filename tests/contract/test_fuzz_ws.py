"""WebSocket frame fuzz driven by the AsyncAPI document, against a real gateway (with
notifications_svc, agent_svc and an offline-model worker).

Frames: valid client frames generated from the `ClientFrame` schema, the same with one thing
broken (a field dropped, of the wrong type, unknown, or another `type`), random JSON, random
text, binary frames, nesting tens of thousands deep, and strings around and over
`WS_MAX_MESSAGE_BYTES`. After every frame the fuzzing client sends `ping` and reads until `pong`:
every frame it receives on the way is checked against the AsyncAPI document by the suite's
contract checker (an `error` frame must carry a documented code), and a close must carry a
documented code (1009 for the oversized frames; nothing else is expected here: the rate limits
are raised so the fuzz reaches the parsers). Meanwhile another user's connection stays open: it
must still answer `ping` and receive a notification created after the fuzz. Finally the
gateway's log must hold no traceback and no ERROR line.

`FUZZ_EXAMPLES` scales the number of frames (`make fuzz` sends thousands, randomized, printing
each frame's outcome).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.chat_wire import ChatErrorCode
from shared.contract import public_asyncapi
from shared.topic_wire import TopicErrorCode
from shared.wire import FrameErrorCode
from tests.agent_svc.stack import ChatStack, stack_fixture
from tests.conftest import TEST_INTERNAL_TOKEN
from tests.support.schema_strategies import ANY_JSON, Strategies, conforms

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))
LONG = EXAMPLES > 20
FRAMES = EXAMPLES * 30
MAX_BYTES = 65_536  # WS_MAX_MESSAGE_BYTES (default)
# Codes an `error` frame may carry: the gateway's and chat's, as documented.
ERROR_CODES = (
    {code.value for code in FrameErrorCode}
    | {code.value for code in ChatErrorCode}
    | {code.value for code in TopicErrorCode}
)


stack = stack_fixture(
    "fuzz-ws",
    offline=True,
    notifications=True,
    AGENT_OFFLINE_DELAY="0.001",
    AGENT_WORKERS="1",
    WS_RATE_LIMIT="100000",
    WS_RATE_BURST="100000",
    WS_USER_RATE_LIMIT="100000",
)


def _deep(depth: int, opener: str) -> str:
    return '{"type": "ping", "x": ' + opener * depth


def frame_strategy() -> st.SearchStrategy[str | bytes]:
    document = public_asyncapi()
    components = document["components"]
    strategies = Strategies(components)
    client_frame = {"$ref": "#/components/schemas/ClientFrame"}
    valid = strategies.valid(client_frame).map(json.dumps)
    return st.one_of(
        valid,
        strategies.mutated(client_frame).map(json.dumps),
        ANY_JSON.map(json.dumps),
        st.text(max_size=60),
        st.binary(min_size=1, max_size=60),
        st.builds(_deep, st.integers(1_000, 60_000), st.sampled_from(["[", '{"a":'])),
        st.integers(1_000, 2 * MAX_BYTES).map(
            lambda n: json.dumps({"type": "message", "message": "x" * n})
        ),
    )


def draw_frames(count: int) -> list[str | bytes]:
    """`count` frames drawn by Hypothesis (generation only: nothing fails while drawing)."""
    drawn: list[str | bytes] = []

    @given(frame=frame_strategy())
    @settings(
        max_examples=count,
        database=None,
        derandomize=not LONG,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    def collect(frame: str | bytes) -> None:
        drawn.append(frame)

    collect()
    return drawn


def test_generated_valid_frames_conform_to_the_schema() -> None:
    """The home-made strategy's "valid" frames really are valid (else the fuzz lies)."""
    components = public_asyncapi()["components"]
    strategies = Strategies(components)
    client_frame = {"$ref": "#/components/schemas/ClientFrame"}

    @given(frame=strategies.valid(client_frame))
    @settings(max_examples=50, database=None, derandomize=True, deadline=None)
    def check(frame: Any) -> None:
        assert conforms(components, client_frame, frame), frame

    check()


async def _until_pong(ws: ClientConnection, seen: Counter[str]) -> None:
    """Read until `pong`; every frame is contract-checked by the suite's `recv` wrapper."""
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            kind = frame["type"]
            if kind == "error":
                code = frame["error"]["code"]
                assert code in ERROR_CODES, frame
                seen[f"error {code}"] += 1
            elif kind == "pong":
                return
            else:
                seen[kind] += 1


async def test_websocket_frame_fuzz(stack: ChatStack, token_for: Callable[..., str]) -> None:
    frames = draw_frames(FRAMES)
    url = stack.gateway.ws_url + "/api/v1/ws/{session}?token={token}"
    user = uuid.uuid4()
    victim_user = uuid.uuid4()
    victim = await connect(url.format(session=uuid.uuid4(), token=token_for(victim_user)))
    assert json.loads(await victim.recv())["type"] == "connection_established"
    seen: Counter[str] = Counter()
    ws: ClientConnection | None = None
    oversized_sent = False  # on the current connection
    try:
        for frame in frames:
            if ws is None:
                ws = await connect(url.format(session=uuid.uuid4(), token=token_for(user)))
                assert json.loads(await ws.recv())["type"] == "connection_established"
                oversized_sent = False
            size = len(frame.encode() if isinstance(frame, str) else frame)
            oversized_sent |= size > MAX_BYTES
            try:
                await ws.send(frame)
                await ws.send('{"type": "ping"}')
                await _until_pong(ws, seen)
                outcome = "answered"
            except ConnectionClosed as closed:
                # A fuzz frame that was itself a ping leaves one pong over, so a close may
                # surface one frame late: it must be 1009, after an oversized frame.
                assert closed.rcvd is not None, ("dropped without a close frame", size)
                code, reason = closed.rcvd.code, closed.rcvd.reason
                assert code == 1009 and oversized_sent, (code, reason, size)
                seen[f"close {code}"] += 1
                outcome = f"closed {code} {reason}"
                ws = None
            if LONG:
                print(f"{outcome:30} {size:7d} B  {str(frame)[:100]!r}")
    finally:
        if ws is not None:
            await ws.close()
    print(f"\nWebSocket fuzz: {len(frames)} frames; outcomes: {dict(sorted(seen.items()))}")
    await _invalid_json_and_oversized_on_a_fresh_connection(
        url.format(session=uuid.uuid4(), token=token_for(user))
    )
    await victim.send('{"type": "ping"}')
    assert json.loads(await asyncio.wait_for(victim.recv(), 5))["type"] == "pong"
    async with httpx.AsyncClient() as client:
        created = await client.post(
            stack.extra[0].url + "/internal/v1/notifications",
            json={"user_id": str(victim_user), "title": "after", "content": "c", "type": "t"},
            headers={"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"},
        )
    assert created.status_code == 201
    notification = json.loads(await asyncio.wait_for(victim.recv(), 10))
    assert notification["type"] == "notification"
    assert notification["data"]["id"] == created.json()["id"]
    await victim.close()
    log = stack.gateway.log_path.read_text()
    assert "Traceback" not in log
    assert '"level": "ERROR"' not in log


async def _invalid_json_and_oversized_on_a_fresh_connection(url: str) -> None:
    """Both documented outcomes, whatever the draw held: the derandomized draw changes with the
    contract, and a fuzzed ping leaves a pong over that can hide a close behind it."""
    async with connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "connection_established"
        await ws.send("{")
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["type"] == "error" and frame["error"]["code"] == "INVALID_JSON", frame
        await ws.send(json.dumps({"type": "message", "message": "x" * MAX_BYTES}))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
