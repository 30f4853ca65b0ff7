"""The raw send path (`gateway.wsprotocol`): frames framed once and written straight to the
transport arrive intact and in order, interleaved with the greeting, replay and answers to the
client; a client that stops reading is closed 1013 without the gateway's memory growing; a
broadcast reaches every client once; and without the extension (uvicorn's stock protocol) the
ASGI fallback path delivers the same frames."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import sys
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as redis
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.httpprotocol import GatewayHttpProtocol
from gateway.wsprotocol import (
    EXTENSION,
    Flag,
    GatewayWebSocketProtocol,
    Inbox,
    TextFrame,
    open_protocol,
    text_frame,
)
from shared import keys
from shared.wire import EnvelopeMeta, encode_envelope
from tests.conftest import Infra, SpawnService
from tests.gateway.conftest import Cluster, open_ws, recv_json, silent, ws_url
from tests.gateway.test_manager import create
from tests.support.processes import ServiceProcess

Token = Callable[..., str]

# Payload sizes around the three length encodings of a frame header (7-bit, 16-bit, 64-bit).
SIZES = (20, 125, 126, 127, 65_535, 65_536, 70_000)


def test_text_frame_matches_websockets() -> None:
    """`text_frame` gives the bytes `websockets` sends for an unmasked final text frame, for
    every length encoding; `TextFrame` keeps the text for the fallback path."""
    for size in (0, 1, 125, 126, 127, 65_535, 65_536, 70_000):
        payload = b"x" * size
        assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)
    frame = TextFrame.of('{"a": "é"}')
    assert frame.payload == '{"a": "é"}'.encode() and frame.text == '{"a": "é"}'
    assert TextFrame(b'{"b": 1}').text == '{"b": 1}'


@pytest.fixture(scope="module")
def chunked(cluster: Cluster, spawn_service: SpawnService) -> ServiceProcess:
    """A gateway on the raw path that delivers large fan-outs in chunks of 16."""
    return spawn_service("gateway", WS_DELIVERY_CHUNK="16", **cluster.upstream_env)


@pytest.fixture(scope="module")
def stock(cluster: Cluster, base_env: dict[str, str], log_dir: Path) -> Iterator[ServiceProcess]:
    """The gateway on uvicorn's stock WebSocket protocol: the ASGI fallback path."""
    process = ServiceProcess(
        "tests.gateway.stock_gateway",
        base_env | cluster.upstream_env,
        log_dir,
        "GATEWAY_PORT",
    )
    process.start()
    yield process
    process.stop()


def _frame(name: str, size: int) -> bytes:
    """A test frame whose JSON is exactly `size` bytes (at least 40), padded with a marker that
    shows truncation or corruption."""
    head = msgspec.json.encode({"type": "test", "data": {"n": name, "pad": ""}})
    pad = max(0, size - len(head))
    return msgspec.json.encode({"type": "test", "data": {"n": name, "pad": "p" * pad}})


def _envelope(channel: str, frame: bytes, seq: int | None = None) -> tuple[str, bytes]:
    """A PUBLISH's arguments, enveloped as `shared.publish` does."""
    return channel, encode_envelope(frame, EnvelopeMeta(seq=seq, ts=time.time()))


async def _exercise_ordering(
    gateway: ServiceProcess, cluster: Cluster, infra: Infra, token: Token
) -> None:
    user, session = uuid.uuid4(), uuid.uuid4()
    async with httpx.AsyncClient() as http:
        before = []
        for start in range(0, 120, 20):
            before += await asyncio.gather(
                *(create(http, cluster.notifications, user, i) for i in range(start, start + 20))
            )
        ws = await open_ws(gateway, session, token(user), query={"last_seq": 0}, max_size=None)
        # The replay of 120 notifications is running: everything below interleaves with it.
        client = redis.Redis.from_url(infra.redis.url)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for i, size in enumerate(SIZES * 3):
                    pipe.publish(*_envelope(keys.session_channel(session), _frame(f"s{i}", size)))
                await pipe.execute()
        finally:
            await client.aclose()
        for _ in range(3):
            await ws.send('{"type": "ping"}')
        await ws.send('{"type": "message"}')  # no text: the chat seam answers with an error
        after = [await create(http, cluster.notifications, user, i) for i in range(120, 125)]
    seqs: list[int] = []
    session_frames: list[dict[str, Any]] = []
    pongs = errors = 0
    async with asyncio.timeout(30):
        while len(seqs) < len(before) + len(after) or len(session_frames) < len(SIZES) * 3:
            frame = await recv_json(ws, 30)
            if frame["type"] == "notification":
                seqs.append(frame["data"]["seq"])
            elif frame["type"] == "test":
                session_frames.append(frame)
            elif frame["type"] == "pong":
                pongs += 1
            elif frame["type"] == "error":
                errors += 1
    assert seqs == sorted(before + after)
    assert [f["data"]["n"] for f in session_frames] == [f"s{i}" for i in range(len(SIZES) * 3)]
    for i, got in enumerate(session_frames):
        assert json.dumps(got, separators=(",", ":")).encode() == _frame(f"s{i}", SIZES[i % 7])
    async with asyncio.timeout(5):
        while pongs < 3 or errors < 1:
            kind = (await recv_json(ws))["type"]
            pongs += kind == "pong"
            errors += kind == "error"
    assert await silent(ws)
    await ws.close()


async def test_raw_frames_intact_and_in_order(
    cluster: Cluster, infra: Infra, token_for: Token
) -> None:
    """On the raw path a resuming client gets the greeting, then its 125 notifications once in
    seq order while session frames of every header size arrive intact in publish order, and the
    answers to its pings and chat frame arrive too."""
    await _exercise_ordering(cluster.a, cluster, infra, token_for)


async def test_fallback_path_without_the_extension(
    stock: ServiceProcess, cluster: Cluster, infra: Infra, token_for: Token
) -> None:
    """Under uvicorn's stock protocol (no `FrameSink`) the same traffic arrives the same way."""
    await _exercise_ordering(stock, cluster, infra, token_for)


async def test_broadcast_reaches_every_client_once(
    chunked: ServiceProcess, infra: Infra, token_for: Token
) -> None:
    """Three broadcasts of different header sizes, delivered in chunks of 16, reach each of 150
    clients once, in order and intact."""
    clients: list[ClientConnection] = []
    for _ in range(3):
        clients += await asyncio.gather(
            *(
                open_ws(chunked, uuid.uuid4(), token_for(uuid.uuid4()), max_size=None)
                for _ in range(50)
            )
        )
    frames = [_frame(f"b{i}", size) for i, size in enumerate((40, 200, 70_000))]
    client = redis.Redis.from_url(infra.redis.url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for frame in frames:
                pipe.publish(*_envelope(keys.BROADCAST_CHANNEL, frame))
            await pipe.execute()
    finally:
        await client.aclose()

    async def received(ws: ClientConnection) -> list[bytes]:
        got = [await asyncio.wait_for(ws.recv(decode=False), 20) for _ in frames]
        assert await silent(ws, 0.1)
        return got

    for got in await asyncio.gather(*(received(ws) for ws in clients)):
        assert got == frames
    await asyncio.gather(*(ws.close() for ws in clients))


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _rss_kib(process: ServiceProcess) -> int:
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


async def test_slow_reader_closed_1013_without_memory_growth(
    cluster: Cluster, spawn_service: SpawnService, infra: Infra, token_for: Token
) -> None:
    """A client that stops reading while 30 MB are published to it is closed 1013 (slow
    consumer) once 4 frames (`WS_SEND_QUEUE_SIZE`) wait beyond the transport's buffer; the
    gateway's memory does not grow with what was published, and the connection, whose close
    frame cannot get through, is dropped after the close timeout."""
    gateway = spawn_service("gateway", WS_SEND_QUEUE_SIZE="4", **cluster.upstream_env)
    session = uuid.uuid4()
    # max_queue=1: the client library stops reading from the socket almost at once.
    slow = await connect(
        ws_url(gateway, session, token=token_for(uuid.uuid4())),
        compression=None,
        max_queue=1,
        max_size=None,
    )
    assert (await recv_json(slow))["type"] == "connection_established"
    rss_before = _rss_kib(gateway)
    big = _frame("big", 100_000)
    client = redis.Redis.from_url(infra.redis.url)
    metrics_url = gateway.url + "/metrics"
    peak = rss_before
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(30):  # 30 x 10 x 100 kB
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(10):
                        pipe.publish(*_envelope(keys.session_channel(session), big))
                    await pipe.execute()
                peak = max(peak, _rss_kib(gateway))
            dropped = 'gateway_ws_frames_dropped_total{reason="slow_consumer"}'
            async with asyncio.timeout(15):
                while True:
                    text = (await http.get(metrics_url)).text
                    peak = max(peak, _rss_kib(gateway))
                    if _metric(text, "gateway_ws_connections") == 0:
                        break
                    await asyncio.sleep(0.2)
            assert _metric(text, dropped) == 1  # the frame that found it too far behind
            assert _metric(text, 'gateway_ws_closes_total{code="1013",reason="slow consumer"}') == 1
    finally:
        await client.aclose()
        slow.transport.abort()  # nothing to read: the gateway dropped it
    assert peak - rss_before < 10 * 1024, (rss_before, peak)


async def test_inbox_delivers_in_order_and_survives_a_cancelled_get() -> None:
    """`Inbox` hands messages out in order, wakes a waiting `get()`, loses nothing when a
    waiting `get()` is cancelled, and refuses a second concurrent consumer."""
    inbox = Inbox()
    assert inbox.empty()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one consumer only"):
        await inbox.get()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.receive", "text": "a"})
    assert await getter == {"type": "websocket.connect"}
    assert not inbox.empty()
    assert await inbox.get() == {"type": "websocket.receive", "text": "a"}
    assert inbox.empty()


async def test_flag_wakes_every_waiter_and_a_cancelled_one_does_not_matter() -> None:
    """`Flag` starts set; once cleared, `wait()` blocks until `set()`, which wakes every
    waiter; cancelling one waiter leaves the others waiting."""
    flag = Flag()
    assert flag.is_set()
    await flag.wait()
    flag.clear()
    assert not flag.is_set()
    first, second = asyncio.create_task(flag.wait()), asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not second.done()
    flag.set()
    await second
    assert flag.is_set()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI application that is never called."""


async def test_constructor_sets_what_uvicorns_sets() -> None:
    """Every attribute uvicorn's constructor sets reads the same on the gateway's protocol (as
    an instance or class attribute), but for the stand-ins (`Inbox`, `Flag`) and the `websockets`
    protocol, which is built once the connection starts."""
    config = uvicorn.Config(app=_no_app, ws_per_message_deflate=False, log_config=None)
    config.load()
    state = ServerState()
    stock = WebSocketsSansIOProtocol(config, state, {"a": 1})
    ours = GatewayWebSocketProtocol(config, state, {"a": 1})
    assert isinstance(ours.queue, Inbox) and isinstance(ours.writable, Flag)
    assert "conn" not in vars(ours)
    differ = {"queue", "writable", "conn"}
    assert {name: getattr(ours, name) for name in vars(stock) if name not in differ} == {
        name: value for name, value in vars(stock).items() if name not in differ
    }


def test_open_protocol_is_a_parsed_server_protocol_of_its_own() -> None:
    """`open_protocol` gives each connection a `ServerProtocol` with the attributes its
    constructor sets, in its order (so the instance dict is no larger), still CONNECTING, no
    mutable state shared with another, and reading frames at once."""
    stock = ServerProtocol(extensions=[], max_size=1000)
    first, second = open_protocol(1000), open_protocol(1000)
    assert list(vars(first)) == list(vars(stock))
    assert sys.getsizeof(vars(first)) == sys.getsizeof(vars(stock))
    assert first.state is State.CONNECTING and first.max_message_size == 1000
    for name in ("id", "extensions", "reader", "events", "writes", "parser"):
        assert getattr(first, name) is not getattr(second, name), name
    first.state = State.OPEN
    first.receive_data(b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"hi", b"ab", strict=True)))
    [event] = first.events_received()
    assert isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.data == b"hi"
    assert second.events_received() == []


@contextlib.asynccontextmanager
async def _served_without_the_collector(
    app: Any, protocol: Callable[[uvicorn.Config, ServerState, dict[str, Any]], asyncio.Protocol]
) -> AsyncIterator[tuple[int, ServerState]]:
    """A loopback server of `app` on `GatewayWebSocketProtocol` whose connections start with
    `protocol(config, state, app_state)`, and the cyclic collector off meanwhile, so that what
    the test finds freed was freed by reference counting; yields the port and uvicorn's server
    state."""
    config = uvicorn.Config(app, ws=GatewayWebSocketProtocol, lifespan="off", log_level="error")
    config.load()
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol(config, state, {}), "127.0.0.1", 0)
    gc.disable()
    try:
        yield server.sockets[0].getsockname()[1], state
    finally:
        gc.enable()
        server.close()
        await server.wait_closed()


async def test_closed_connection_freed_without_the_collector() -> None:
    """On `GatewayWebSocketProtocol` an accepted connection keeps neither the handshake request
    nor its response, its attributes sit in a dict no larger than a fresh copy, and once the
    client leaves, reference counting alone frees the protocol and its `websockets` state (no
    cycle waits for a full collection)."""
    ended, lost, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}

    class Observed(GatewayWebSocketProtocol):
        """Tells the test when uvicorn's last two callbacks for the connection have run."""

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost.set()

        def on_task_complete(self, task: asyncio.Task[None]) -> None:
            super().on_task_complete(task)
            finished.set()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        protocol = scope["extensions"][EXTENSION]["sink"]
        seen["kept"] = [hasattr(protocol, "request"), hasattr(protocol, "response")]
        seen["compact"] = sys.getsizeof(protocol.__dict__) <= sys.getsizeof(dict(vars(protocol)))
        seen["protocol"], seen["parser"] = weakref.ref(protocol), weakref.ref(protocol.conn)
        del protocol
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        assert (await receive())["type"] == "websocket.disconnect"
        ended.set()

    async with _served_without_the_collector(app, Observed) as (port, _):
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        await ended.wait()
        await lost.wait()
        await finished.wait()
        assert seen["kept"] == [False, False]
        assert seen["compact"], "the protocol's attributes outgrew their dict's table"
        assert seen["protocol"]() is None
        assert seen["parser"]() is None


class _Recorder:
    """A reader of an adopted connection that records its receive events and keeps the
    protocol, as the gateway's connection does."""

    def __init__(self, sink: GatewayWebSocketProtocol) -> None:
        self.sink = sink
        self.events: list[str] = []

    def put_nowait(self, item: Any) -> None:
        self.events.append(item["type"])


async def test_adopted_connection_served_without_its_task_and_freed_without_the_collector() -> None:
    """Once the application adopts its connection (`GatewayWebSocketProtocol.adopt`) and
    returns, the protocol keeps the socket open and hands every receive event to the reader —
    a message the client sent before the adoption first, the disconnect last —, drops the ASGI
    scope, and reference counting alone frees it after the client leaves, though the reader
    holds the protocol as the gateway's connection does."""
    ended, lost, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    received = asyncio.Event()
    seen: dict[str, Any] = {}

    class Echo(_Recorder):
        """A reader that echoes text messages through the sink, as frames it writes itself."""

        def put_nowait(self, item: Any) -> None:
            super().put_nowait(item)
            if item["type"] == "websocket.receive":
                self.sink.write_frames(text_frame(item["text"].encode()))
                # Not from within `put_nowait`: the protocol pauses reading right after it.
                asyncio.get_running_loop().call_soon(self.sink.resume_reading)
            else:  # the client's close, then the lost transport: the first one counts
                seen.setdefault("events", list(self.events))
                ended.set()

    class Observed(GatewayWebSocketProtocol):
        """Tells the test when a frame arrived, the ASGI task ended and the connection is lost."""

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.handshake_complete:  # a frame, not the handshake request
                received.set()

        def on_task_complete(self, task: asyncio.Task[None]) -> None:
            super().on_task_complete(task)
            finished.set()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost.set()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        protocol = scope["extensions"][EXTENSION]["sink"]
        # Held until adopted: the client's first message, sent right after the handshake.
        await received.wait()
        assert not protocol.queue.empty()
        protocol.adopt(Echo(protocol))
        seen["protocol"], seen["parser"] = weakref.ref(protocol), weakref.ref(protocol.conn)

    async with _served_without_the_collector(app, Observed) as (port, state):
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            await ws.send("early")
            await finished.wait()
            assert await ws.recv() == "early"
            assert not state.tasks, "the ASGI task ended with the application"
            assert not hasattr(seen["protocol"](), "scope")
            await ws.send("late")
            assert await ws.recv() == "late"
        await ended.wait()
        await lost.wait()
        assert seen["events"] == ["websocket.receive"] * 2 + ["websocket.disconnect"]
        assert seen["protocol"]() is None
        assert seen["parser"]() is None


async def test_connection_lost_before_adoption_hands_over_the_disconnect_and_is_freed() -> None:
    """A client that leaves while the handshake's async part still runs: adopting afterwards
    hands the reader the held disconnect, and reference counting alone frees the protocol."""
    lost, adopted = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}

    class Observed(GatewayWebSocketProtocol):
        """Tells the test when the connection is lost."""

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost.set()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        protocol = scope["extensions"][EXTENSION]["sink"]
        await lost.wait()
        reader = _Recorder(protocol)
        protocol.adopt(reader)
        seen["events"] = reader.events
        seen["protocol"] = weakref.ref(protocol)
        adopted.set()

    async with _served_without_the_collector(app, Observed) as (port, state):
        async with connect(f"ws://127.0.0.1:{port}/", compression=None):
            pass
        await adopted.wait()
        while state.tasks:  # the application's task finishes on the loop's next turns
            await asyncio.wait(set(state.tasks))
        assert seen["events"][:1] == ["websocket.disconnect"]
        assert set(seen["events"]) == {"websocket.disconnect"}
        assert seen["protocol"]() is None


async def test_http_protocol_freed_once_upgraded_without_the_collector() -> None:
    """The HTTP protocol that parsed a WebSocket handshake (`GatewayHttpProtocol`) is freed by
    reference counting as soon as the connection is upgraded: no cycle is left for a young
    collection to find on every connect."""
    received = asyncio.Event()
    http_protocols: list[weakref.ref[GatewayHttpProtocol]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        received.set()
        assert (await receive())["type"] == "websocket.disconnect"

    def http_protocol(
        config: uvicorn.Config, state: ServerState, app_state: dict[str, Any]
    ) -> GatewayHttpProtocol:
        protocol = GatewayHttpProtocol(config, state, app_state)
        http_protocols.append(weakref.ref(protocol))
        return protocol

    served = _served_without_the_collector(app, http_protocol)
    async with served as (port, _), connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await received.wait()
        assert len(http_protocols) == 1
        assert http_protocols[0]() is None
