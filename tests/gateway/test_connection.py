"""Per-connection limits on a real gateway configured small, on both WebSocket read paths
(`ws_path`): frame size (1009), rate (RATE_LIMITED then 1008), slow consumer (1013), instance
capacity (1013), idle timeout (1000), and the server heartbeat (protocol pings); and how an idle
adopted connection ends (in its disconnect callback, without a task)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import httpx
import pytest
import redis.asyncio as redis
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from gateway.connection import Connection, RawConnection
from gateway.limits import UserRateLimit
from gateway.state import GatewayState
from gateway.subscriptions import TopicHub
from gateway.wsprotocol import LINGER, Reader, TextFrame
from shared import publish as shared_publish
from shared.settings import Settings
from shared.wire import encode
from tests.conftest import Infra, SpawnService
from tests.gateway.conftest import (
    Cluster,
    closed_with,
    open_ws,
    recv_json,
    ws_url,
)
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


@pytest.fixture(scope="module")
def limited(
    cluster: Cluster, spawn_service: SpawnService, ws_path: dict[str, str]
) -> ServiceProcess:
    """A gateway with tiny limits."""
    return spawn_service(
        "gateway",
        WS_HEARTBEAT_INTERVAL="0.5",
        WS_CONNECTION_TIMEOUT="2",
        WS_MAX_MESSAGE_BYTES="1024",
        WS_MAX_CONNECTIONS="3",
        WS_SEND_QUEUE_SIZE="4",
        WS_RATE_LIMIT="5",
        WS_RATE_BURST="5",
        **ws_path,
        **cluster.upstream_env,
    )


@pytest.fixture(scope="module")
def small_queue(
    cluster: Cluster, spawn_service: SpawnService, ws_path: dict[str, str]
) -> ServiceProcess:
    """A gateway whose only tight limit is the send queue. A client that stops reading cannot
    answer keepalive pings nor send frames either, so with `limited`'s half-second heartbeat
    and two-second idle timeout a loaded machine closed it 1011 or 1000 before the slow-consumer
    bound was reached: here those timers are far beyond the test's length."""
    return spawn_service(
        "gateway",
        WS_HEARTBEAT_INTERVAL="60",
        WS_CONNECTION_TIMEOUT="600",
        WS_SEND_QUEUE_SIZE="4",
        **ws_path,
        **cluster.upstream_env,
    )


@pytest.fixture(scope="module")
def user_limited(
    cluster: Cluster, spawn_service: SpawnService, ws_path: dict[str, str]
) -> list[ServiceProcess]:
    """Two gateways with a small per-user frame rate and a generous per-connection one."""
    env = {"WS_USER_RATE_LIMIT": "4", "WS_RATE_LIMIT": "100", "WS_RATE_BURST": "100", **ws_path}
    return [spawn_service("gateway", **env, **cluster.upstream_env) for _ in range(2)]


async def test_user_rate_limit_spans_connections_and_gateways(
    user_limited: list[ServiceProcess], token_for: Token
) -> None:
    """A user's frames count together across connections on different gateways: six pings at
    once, three per connection, against a limit of four per second get four pongs and two
    RATE_LIMITED errors; another user is not affected."""
    user = uuid.uuid4()
    connections = [await open_ws(g, uuid.uuid4(), token_for(user)) for g in user_limited]
    other = await open_ws(user_limited[0], uuid.uuid4(), token_for(uuid.uuid4()))
    for ws in (*connections, other):
        for _ in range(3):
            await ws.send('{"type": "ping"}')
    answers = [(await recv_json(ws)) for ws in connections for _ in range(3)]
    kinds = sorted(a["type"] if a["type"] == "pong" else a["error"]["code"] for a in answers)
    assert kinds == ["RATE_LIMITED"] * 2 + ["pong"] * 4
    assert all("user" in a["error"]["message"] for a in answers if a["type"] == "error")
    assert [(await recv_json(other))["type"] for _ in range(3)] == ["pong"] * 3
    for ws in (*connections, other):
        await ws.close()


async def test_oversized_frame_closes_1009(limited: ServiceProcess, token_for: Token) -> None:
    """A frame over WS_MAX_MESSAGE_BYTES closes the connection with 1009."""
    ws = await open_ws(limited, uuid.uuid4(), token_for(uuid.uuid4()))
    await ws.send('{"type": "ping", "pad": "' + "x" * 2000 + '"}')
    code, reason = await closed_with(ws)
    assert code == 1009 and reason


async def test_oversized_frame_still_arriving_gets_its_close_frame(
    limited: ServiceProcess, token_for: Token
) -> None:
    """Regression (found by the frame fuzz): the close frame answering an oversized frame was
    lost when the rest of that frame was still arriving (the server closed the socket with
    unread data, the kernel sent a reset, the client saw 1006). Each attempt must see 1009, and
    the server ends the connection once the client stopped sending, not after the drain's
    2 s limit (the client waits for that end before it reports the close)."""
    loop = asyncio.get_running_loop()
    for _ in range(3):
        ws = await open_ws(limited, uuid.uuid4(), token_for(uuid.uuid4()))
        started = loop.time()
        await ws.send('{"type": "ping", "pad": "' + "x" * 1_000_000 + '"}')
        await ws.send('{"type": "ping"}')
        code, reason = await closed_with(ws)
        assert code == 1009 and reason
        assert loop.time() - started < LINGER * 0.75


async def test_rate_limit_then_disconnect(limited: ServiceProcess, token_for: Token) -> None:
    """Within the burst every ping is answered; beyond it RATE_LIMITED errors; a flood that goes
    on is closed 1008."""
    ws = await open_ws(limited, uuid.uuid4(), token_for(uuid.uuid4()))
    for _ in range(5):
        await ws.send('{"type": "ping"}')
    for _ in range(5):
        assert (await recv_json(ws))["type"] == "pong"
    await ws.send('{"type": "ping"}')
    limited_frame = await recv_json(ws)
    assert limited_frame["type"] == "error" and limited_frame["error"]["code"] == "RATE_LIMITED"
    for _ in range(20):
        await ws.send('{"type": "ping"}')
    assert await closed_with(ws) == (1008, "rate limit exceeded")


async def test_slow_consumer_closed_1013(
    small_queue: ServiceProcess, infra: Infra, token_for: Token
) -> None:
    """A client that stops reading while frames keep coming is closed 1013; other connections of
    the same gateway keep working."""
    session = uuid.uuid4()
    # max_queue=1 and a tiny read buffer: the client stops reading from the socket almost at once.
    slow = await connect(
        ws_url(small_queue, session, token=token_for(uuid.uuid4())),
        compression=None,
        max_queue=1,
        max_size=None,
    )
    assert (await recv_json(slow))["type"] == "connection_established"
    healthy = await open_ws(small_queue, uuid.uuid4(), token_for(uuid.uuid4()))
    big = encode({"type": "bulk", "blob": "y" * 100_000})
    client = redis.Redis.from_url(infra.redis.url)
    # ~20 MB at once: more than the kernel's socket buffers (a few MB on loopback), the
    # transport's 64 KiB and 4 frames beyond it can hold.
    for _ in range(4):
        await asyncio.gather(*(shared_publish.to_session(client, session, big) for _ in range(50)))
    await client.aclose()
    # The close frame comes after what the buffers held, megabytes for the client (and the
    # contract checker) to read first: seconds on a loaded machine.
    code, reason = await closed_with(slow, timeout=60)
    assert code == 1013 and reason.startswith("slow consumer")
    await healthy.send('{"type": "ping"}')
    assert (await recv_json(healthy))["type"] == "pong"
    await healthy.close()
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(small_queue.url + "/metrics")).text
    assert 'gateway_ws_frames_dropped_total{reason="slow_consumer"}' in metrics


async def test_instance_capacity(limited: ServiceProcess, token_for: Token) -> None:
    """WS_MAX_CONNECTIONS per instance: the next connection is closed 1013."""
    held = [await open_ws(limited, uuid.uuid4(), token_for(uuid.uuid4())) for _ in range(3)]
    extra = await open_ws(limited, uuid.uuid4(), token_for(uuid.uuid4()), greet=False)
    code, reason = await closed_with(extra)
    assert code == 1013 and reason.startswith("server at capacity")
    for ws in held:
        await ws.close()


async def test_idle_timeout_closes_1000(limited: ServiceProcess, token_for: Token) -> None:
    """No client frame for WS_CONNECTION_TIMEOUT: closed 1000 "idle timeout"; pings keep a
    connection alive."""
    idle = await open_ws(limited, uuid.uuid4(), token_for(uuid.uuid4()))
    heartbeats: asyncio.Queue[None] = asyncio.Queue()
    chatty = await open_ws(
        limited, uuid.uuid4(), token_for(uuid.uuid4()), logger=_ping_logger(heartbeats)
    )
    closing = asyncio.create_task(closed_with(idle))
    # The server's heartbeat (every 0.5 s) paces the client's pings: no clock of the test's own.
    while not closing.done():
        async with asyncio.timeout(5):
            await heartbeats.get()
        await chatty.send('{"type": "ping"}')
        assert (await recv_json(chatty))["type"] == "pong"
    assert await closing == (1000, "idle timeout")
    await chatty.send('{"type": "ping"}')
    assert (await recv_json(chatty))["type"] == "pong"
    await chatty.close()


async def test_server_heartbeat_pings(limited: ServiceProcess, token_for: Token) -> None:
    """The server sends a WebSocket ping every WS_HEARTBEAT_INTERVAL (here 0.5 s)."""
    heartbeats: asyncio.Queue[None] = asyncio.Queue()
    ws = await open_ws(
        limited, uuid.uuid4(), token_for(uuid.uuid4()), logger=_ping_logger(heartbeats)
    )
    async with asyncio.timeout(5):
        for _ in range(2):
            await heartbeats.get()
    await ws.close()


def _ping_logger(heartbeats: asyncio.Queue[None]) -> logging.Logger:
    """A client connection logger that puts one item in `heartbeats` per server PING received
    (the websockets client logs frames at DEBUG, on the event loop)."""

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("< PING"):
                heartbeats.put_nowait(None)

    logger = logging.getLogger(f"test.heartbeat.{uuid.uuid4()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(Recorder())
    return logger


class _Sink:
    """A `FrameSink` that records the frames written to it (no transport behind it)."""

    write_paused = False

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_frames(self, data: bytes) -> bool:
        self.written.append(data)
        return True

    async def wait_writable(self) -> None:
        return None

    def abort(self) -> None:
        return None

    async def close_with(self, code: int, reason: str) -> None:
        return None

    def adopt(self, reader: Reader) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class _Host:
    """A `ConnectionHost` that records the connections handed to `end()`."""

    def __init__(self, settings: Settings) -> None:
        self.state = cast(GatewayState, SimpleNamespace(settings=settings))
        self.ended: list[Connection] = []

    @property
    def user_rate(self) -> UserRateLimit:
        raise AssertionError("no frame is read in this test")

    @property
    def topics(self) -> TopicHub:
        raise AssertionError("no topic frame is read in this test")

    def close_later(self, conn: Connection, code: int, reason: str) -> None:
        raise AssertionError(f"nothing should close {conn} ({code} {reason})")

    async def disconnect(self, conn: Connection) -> None:
        raise AssertionError("an idle connection's disconnect does not wait for its host")

    def end(self, conn: Connection) -> None:
        self.ended.append(conn)

    def release_slot(self) -> None:
        raise AssertionError("the host releases the slot of a connection it ends")


async def test_idle_adopted_connection_ends_in_the_disconnect_callback(
    settings: Settings,
) -> None:
    """An adopted connection with nothing pending that receives its disconnect ends within the
    protocol's callback: handed to the host's `end()` before `put_nowait` returns, with no task
    created, closed with the client's code, and offered frames are refused from then on; a
    second disconnect (the lost transport after the close frame) is ignored."""
    host, sink = _Host(settings), _Sink()
    conn = RawConnection(
        host, cast(WebSocket, None), "c1", uuid.uuid4(), uuid.uuid4(), time.time() + 60, sink
    )
    conn.start_writer()
    conn.own()
    before, after = TextFrame(b'{"type":"pong"}'), TextFrame(b'{"type":"late"}')
    assert conn.offer(before)
    tasks = asyncio.all_tasks()
    conn.put_nowait({"type": "websocket.disconnect", "code": 1001, "reason": ""})
    assert host.ended == [conn]
    assert asyncio.all_tasks() == tasks
    assert conn.close_code == 1001
    assert not conn.offer(after)
    conn.put_nowait({"type": "websocket.disconnect", "code": 1006, "reason": ""})
    assert host.ended == [conn]
    assert sink.written == [before.wire]
