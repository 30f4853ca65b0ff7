"""The outside world of a chaos run: WebSocket clients that resume, and a producer that retries.

A `Client` holds one session through nginx with a real `websockets` client, reconnects after any
drop or refused connect (jittered backoff from `shared.backoff`) with `?last_seq=` — the highest
seq it has seen — and records every notification seq with its arrival time, and every drop and
return. The `Producer` creates notifications at a steady rate through notifications_svc's
internal batch API (`POST /internal/v1/notifications/batch`, lanes of users each sending
what fell due as one batch) the way
docs/notifications.md tells producers to: each item has its own `dedupe_key` and a batch is
retried with the same body until answered, so a batch that timed out but committed is never
doubled. It records what committed (user, seq, when answered), when each create was first
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

CREATE_TIMEOUT = 10.0  # seconds a producer waits for a batch's answer before retrying it
BATCH_EVERY = 0.05  # seconds between two batches: 50 creates each at 1,000/s
# Batches waiting for an answer at once, one per lane of users: several, so the service works
# on several batches together (each spends most of its time in PostgreSQL round trips), and
# with the relay's one no more than its PostgreSQL pool (10), so none waits long for a
# connection while its timeout runs.
SENDERS = 6
# Creates per batch at most: 250 items of about 120 bytes stay well under notifications_svc's
# default HTTP_MAX_BODY_BYTES (64 KiB) and its 500-item limit.
MAX_BATCH = 250


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
    committed_at: float | None = None  # monotonic, when the answer carrying `seq` arrived


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
    requested: int = 0  # creates requested (sent at least once)
    late: int = 0  # creates started more than 0.1 s after their due time
    held_back: int = 0  # creates never offered: their lane already held a full batch
    errors: dict[int, Counter[str]] = field(default_factory=dict)  # step -> "500", "timeout", ...
    _started: float = field(default=0.0, init=False)  # monotonic, when `run` began
    _stopping: bool = field(default=False, init=False)  # `run` was cancelled: lanes finish

    def _error(self, step: int, kind: str) -> None:
        self.errors.setdefault(step, Counter())[kind] += 1

    async def _send(self, http: httpx.AsyncClient, batch: list[tuple[int, Create]]) -> None:
        """Create `batch` (index, create) in one request, retried with the same body until
        answered: every item carries its `dedupe_key`, so a retry of a batch that committed
        answers the same notifications (dedupe hits) instead of creating them again."""
        body = {
            "notifications": [
                {
                    "user_id": str(create.user),
                    "title": f"n{index}",
                    "content": "c",
                    "type": "chaos",
                    # Unique within the run; the users are the run's own, so across runs too.
                    "dedupe_key": f"chaos-{index}",
                }
                for index, create in batch
            ]
        }
        step = batch[0][1].step
        backoff = Backoff(base=0.1, maximum=2.0)
        while True:
            try:
                response = await http.post(
                    self.url + "/internal/v1/notifications/batch",
                    json=body,
                    headers={"Authorization": f"Bearer {self.internal_token}"},
                )
            except httpx.TimeoutException:
                self._error(step, "timeout")
            except httpx.TransportError:
                self._error(step, "connection")
            else:
                if response.status_code in (200, 201):
                    break
                self._error(step, str(response.status_code))
                if response.status_code < 500:
                    raise RuntimeError(f"batch refused: {response.status_code} {response.text}")
            await backoff.sleep()
        answered = time.monotonic()
        items = response.json()["items"]
        for (_, create), item in zip(batch, items, strict=True):
            create.seq = item["notification"]["seq"]
            create.committed_at = answered
            self.committed[create.user] += 1

    async def _lane(self, http: httpx.AsyncClient, due: list[int], ready: asyncio.Event) -> None:
        """One sender: whatever fell due in `due` (indexes of creates, of its own users only)
        goes out as one batch (up to `MAX_BATCH`), the next once that one was answered. Ends
        when the producer stops and nothing is left."""
        while True:
            await ready.wait()
            ready.clear()
            while due:
                now = time.monotonic()
                indexes, due[:] = due[:MAX_BATCH], due[MAX_BATCH:]
                batch = [
                    (i, Create(self.users[i % len(self.users)], self.step, now)) for i in indexes
                ]
                for i, create in batch:
                    lag = max(0.0, now - (self._started + i / self.rate))
                    self.late += lag > 0.1
                    if self.record:
                        self.lag.append(lag)
                        self.creates.append(create)
                self.requested += len(batch)
                await self._send(http, batch)
            if self._stopping:
                return

    async def run(self) -> None:
        """Create at `rate` per second, round robin over `users`, until cancelled. The users are
        split over `SENDERS` lanes; every `BATCH_EVERY` seconds the creates that fell due join
        their lane, and each lane sends what it holds as one batch as soon as its previous batch
        was answered: while the service is slow or stopped the due creates pile up and leave
        as bigger batches (beyond a full batch they are not offered at all, and counted in
        `held_back`), and two lanes never wait for each other's users' locks. On
        cancellation no create is added, and every one a lane holds is seen through to its
        answer."""
        limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
        lanes = [(list[int](), asyncio.Event()) for _ in range(SENDERS)]
        async with httpx.AsyncClient(timeout=CREATE_TIMEOUT, limits=limits) as http:
            self._started, self._stopping, index = time.monotonic(), False, 0
            senders = [asyncio.create_task(self._lane(http, *lane)) for lane in lanes]
            try:
                while True:
                    await asyncio.sleep(BATCH_EVERY)
                    due = int((time.monotonic() - self._started) * self.rate)
                    for i in range(index, due):
                        held = lanes[i % len(self.users) % SENDERS][0]
                        # A lane holding a full batch already: the service takes less than
                        # `rate`; queueing more would only grow a backlog that outlives the run.
                        if len(held) < MAX_BATCH:
                            held.append(i)
                        else:
                            self.held_back += 1
                    index = due
                    for held, ready in lanes:
                        if held:
                            ready.set()
            finally:
                self._stopping = True
                for _, ready in lanes:
                    ready.set()
                await asyncio.gather(*senders)

    def answered(self, until: float) -> bool:
        """Every create requested up to `until` (monotonic) has committed and been answered."""
        return all(c.seq is not None for c in self.creates if c.requested_at <= until)
