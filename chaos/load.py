"""The outside world of a chaos run: WebSocket clients that resume, and a producer that retries.

A `Client` holds one session through nginx with a real `websockets` client, reconnects after any
drop or refused connect (jittered backoff from `shared.backoff`) with `?last_seq=` — the highest
seq it has seen — and records every notification seq with its arrival time, and every drop and
return. The `Producer` creates notifications at a steady rate through notifications_svc's
internal API the way docs/notifications.md tells producers to: each create has its own
`Idempotency-Key` and is retried with it until answered, so a create that timed out but
committed is never doubled. It records what committed (user, seq), when each create was first
requested, and every 5xx or transport error it met, by step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from shared.backoff import Backoff

CREATE_TIMEOUT = 5.0  # seconds a producer waits for one answer before retrying
MAX_IN_FLIGHT = 2000  # creates waiting for an answer at once (bounds a long outage)


@dataclass
class Client:
    url: str  # ws://.../api/v1/ws/<session>?token=...
    user: uuid.UUID
    source: str = "127.0.0.1"  # local address (nginx limits connections per address)
    received: list[tuple[int, float]] = field(default_factory=list)  # (seq, monotonic arrival)
    drops: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    refusals: Counter[str] = field(default_factory=Counter)  # why reconnects failed
    record: bool = True  # keep every arrival in `received`; False (a soak): counters only
    open_timeout: float = 5.0  # seconds for the handshake, and again for the first frame
    count: int = 0  # notifications received
    highest: int = 0  # highest seq received
    backwards: int = 0  # received at or below `highest`: duplicated or reordered
    _ws: ClientConnection | None = field(default=None, init=False, repr=False)

    async def _open(self) -> ClientConnection:
        backoff = Backoff(base=0.1, maximum=2.0)
        # The first connection takes what comes from now on; every reconnect resumes, from 0
        # when nothing arrived yet (without last_seq the gateway would start from "now").
        resume = self.connected.is_set() or bool(self.drops)
        while True:
            query = f"&last_seq={self.highest}" if resume else ""
            try:
                ws = await connect(
                    self.url + query,
                    compression=None,
                    open_timeout=self.open_timeout,
                    local_addr=(self.source, 0),
                )
                frame = json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout))
                if frame["type"] == "connection_established":
                    return ws
                self.refusals[str(frame.get("type"))] += 1
                await ws.close()
            except ConnectionClosed as exc:
                self.refusals[f"close {exc.rcvd.code if exc.rcvd else None}"] += 1
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.refusals[type(exc).__name__] += 1
            await backoff.sleep()

    async def reconnect(self) -> None:
        """Close the connection (churn): `run` records a drop and resumes, as after any drop."""
        if self._ws is not None:
            await self._ws.close()

    def _take(self, seq: int) -> None:
        self.count += 1
        if seq <= self.highest:
            self.backwards += 1
        self.highest = max(self.highest, seq)
        if self.record:
            self.received.append((seq, time.monotonic()))

    async def run(self) -> None:
        """Receive until cancelled, reconnecting after every drop."""
        ws = self._ws = await self._open()
        self.connected.set()
        try:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed:
                    self.drops.append(time.monotonic())
                    self.connected.clear()
                    ws = self._ws = await self._open()
                    self.returns.append(time.monotonic())
                    self.connected.set()
                    continue
                frame = json.loads(raw)
                if frame["type"] == "notification":
                    self._take(frame["data"]["seq"])
        finally:
            await ws.close()


@dataclass
class Create:
    user: uuid.UUID
    step: int
    requested_at: float
    seq: int | None = None  # set once committed and answered


@dataclass
class Producer:
    url: str  # notifications_svc's base URL
    internal_token: str
    users: list[uuid.UUID]
    rate: float  # creates per second
    step: int = 0  # the step new creates belong to (set by the run)
    creates: list[Create] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # seconds each create started after its due time
    record: bool = True  # keep every create and lag; False (a soak): the counters below only
    committed: Counter[uuid.UUID] = field(default_factory=Counter)  # creates answered, per user
    late: int = 0  # creates started more than 0.1 s after their due time
    errors: dict[int, Counter[str]] = field(default_factory=dict)  # step -> "500", "timeout", ...
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def _error(self, step: int, kind: str) -> None:
        self.errors.setdefault(step, Counter())[kind] += 1

    async def _create(self, http: httpx.AsyncClient, create: Create, index: int) -> None:
        key = f"chaos-{create.user}-{index}"
        body = {"user_id": str(create.user), "title": f"n{index}", "content": "c", "type": "chaos"}
        backoff = Backoff(base=0.1, maximum=2.0)
        while True:
            try:
                response = await http.post(
                    self.url + "/internal/v1/notifications",
                    json=body,
                    headers={
                        "Authorization": f"Bearer {self.internal_token}",
                        "Idempotency-Key": key,
                    },
                )
            except httpx.TimeoutException:
                self._error(create.step, "timeout")
            except httpx.TransportError:
                self._error(create.step, "connection")
            else:
                if response.status_code in (200, 201):
                    create.seq = response.json()["seq"]
                    self.committed[create.user] += 1
                    return
                self._error(create.step, str(response.status_code))
                if response.status_code < 500:
                    raise RuntimeError(f"create refused: {response.status_code} {response.text}")
            await backoff.sleep()

    async def run(self) -> None:
        """Create at `rate` per second, round robin over `users`, until cancelled; on
        cancellation it still waits for every create already requested to be answered."""
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=CREATE_TIMEOUT, limits=limits) as http:
            started, index = time.monotonic(), 0
            try:
                while True:
                    due = started + index / self.rate
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if len(self._tasks) >= MAX_IN_FLIGHT:
                        # Everything waits on a stopped service: hold back rather than pile up.
                        await asyncio.sleep(0.05)
                        continue
                    user = self.users[index % len(self.users)]
                    lag = max(0.0, time.monotonic() - due)
                    self.late += lag > 0.1
                    create = Create(user, self.step, time.monotonic())
                    if self.record:
                        self.lag.append(lag)
                        self.creates.append(create)
                    task = asyncio.create_task(self._create(http, create, index))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    index += 1
            finally:
                # Cancelled: no new creates, but every one requested is seen through.
                if self._tasks:
                    await asyncio.gather(*self._tasks)

    def answered(self, until: float) -> bool:
        """Every create requested up to `until` (monotonic) has committed and been answered."""
        return all(c.seq is not None for c in self.creates if c.requested_at <= until)
