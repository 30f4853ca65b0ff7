"""Load worker of the reconnect-storm scenario: a process holding one WebSocket client per user,
recording every notification's `seq` and arrival, and reconnecting with `?last_seq=` when its
connection drops.

Clients first connect straight to one gateway (the one the scenario kills). Once the storm is
armed, a client whose connection closes reconnects at once — the harshest case for the survivor:
every client of the dead gateway at the same moment — through nginx, with the highest `seq` it
has seen; a failed attempt is retried after the JavaScript client's backoff (full jitter between
0.5 s and a ceiling of 1 s doubling per attempt). Each client binds its own loopback source
address, 50 clients per address, because nginx limits connections per address.

A notification's `seq` is read from the frame's bytes (`"seq":N`); one at or below the highest
seen is a duplicate (the gateway promises each once, in order). Commands, as in `bench.loadgen`:
  connect(clients, port, concurrency) -> dict   clients: (index, path) pairs; a refused first
                   connection is retried three times
  arm(port)        -> dict    reconnect through `port` from now on
  status()         -> dict    how many are connected, back since the storm, arrivals
  results()        -> dict    per client: reconnected time, seq before the drop; all arrivals
  close_all()      -> dict    stop reconnecting and close everything
  stop()           -> None
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from bench import system
from bench.loadgen import PipeWorker
from bench.wsclient import OP_TEXT, ClientConnection, connect_from

CLIENTS_PER_ADDRESS = 50  # deploy/nginx.conf: limit_conn per_address 100
_SEQ = re.compile(rb'"seq":(\d+)')
GREETING_TIMEOUT = 30.0
INITIAL_RETRIES = (0.5, 1.0, 2.0)  # seconds before each retry of a first connection refused


def source_address(index: int) -> str:
    """The loopback address client `index` connects from (127.0.0.1 to 127.0.x.y)."""
    n = 1 + index // CLIENTS_PER_ADDRESS
    return f"127.0.{n // 250}.{1 + n % 250}"


class Client:
    """One user's connection over time."""

    __slots__ = ("attempts", "conn", "dropped_seq", "index", "last_seq", "path", "reconnected_ns")

    def __init__(self, index: int, path: str) -> None:
        self.index, self.path = index, path
        self.conn: ClientConnection | None = None
        self.last_seq = 0
        self.dropped_seq = -1  # last_seq when the connection dropped during the storm
        self.reconnected_ns = 0  # greeting received after the drop
        self.attempts = 0


class StormWorker(PipeWorker):
    def __init__(self, pipe: Connection) -> None:
        super().__init__(pipe)
        self.clients: dict[int, Client] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.arrival_index: array[int] = array("q")
        self.arrival_seq: array[int] = array("q")
        self.arrival_ns: array[int] = array("q")
        self.duplicates = 0
        self.storm_port: int | None = None
        self.errors: Counter[str] = Counter()

    def sink(self, conn: ClientConnection, opcode: int, payload: bytes, now: int) -> None:
        if opcode != OP_TEXT:
            return
        match = _SEQ.search(payload)
        if match is None:
            return
        client = self.clients[conn.index]
        seq = int(match[1])
        if seq <= client.last_seq:
            self.duplicates += 1
            return
        client.last_seq = seq
        self.arrival_index.append(client.index)
        self.arrival_seq.append(seq)
        self.arrival_ns.append(now)

    async def shutdown(self) -> None:
        await self.cmd_close_all()

    async def _open(self, client: Client, port: int, path: str) -> ClientConnection | None:
        """One attempt: the connection once the greeting (the first frame) arrived, else None."""
        client.attempts += 1
        try:
            conn = await connect_from(
                source_address(client.index), "127.0.0.1", port, path, self.sink, client.index
            )
        except Exception as exc:
            self.errors[type(exc).__name__ + ": " + str(exc)[:60]] += 1
            return None
        waiters: list[asyncio.Future[Any]] = [conn.greeted, conn.closed]
        await asyncio.wait(waiters, timeout=GREETING_TIMEOUT, return_when="FIRST_COMPLETED")
        if conn.greeted.done():
            client.conn = conn
            return conn
        self.errors[f"closed {conn.close_code} before the greeting"] += 1
        conn.close()
        return None

    async def _hold(self, client: Client) -> None:
        """Keep the client connected: after a drop during the storm, reconnect through the
        storm port with `last_seq`, retrying with backoff."""
        while client.conn is not None:
            # Shielded: cancelling this task at the end must not cancel the connection's future.
            await asyncio.shield(client.conn.closed)
            port = self.storm_port
            if port is None:
                return
            client.dropped_seq, client.conn = client.last_seq, None
            ceiling = 1.0
            path = f"{client.path}&last_seq={client.last_seq}"
            while (conn := await self._open(client, port, path)) is None:
                await asyncio.sleep(0.5 + random.random() * (ceiling - 0.5))
                ceiling = min(ceiling * 2, 20.0)
            # When the greeting was read, not when this task got its turn: with thousands of
            # clients reconnecting in one process, the task's turn comes up to a second later.
            client.reconnected_ns = conn.greeted_ns

    async def cmd_connect(
        self, clients: list[tuple[int, str]], port: int, concurrency: int
    ) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def one(index: int, path: str) -> bool:
            client = self.clients[index] = Client(index, path)
            async with gate:
                opened = await self._open(client, port, path) is not None
            for delay in INITIAL_RETRIES:  # refused under load: retried, as a client would
                if opened:
                    break
                await asyncio.sleep(delay)
                async with gate:
                    opened = await self._open(client, port, path) is not None
            if opened:
                task = asyncio.create_task(self._hold(client))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            return opened

        opened = await asyncio.gather(*(one(i, p) for i, p in clients))
        return {
            "opened": sum(opened),
            "failed": len(opened) - sum(opened),
            "seconds": time.monotonic() - started,
            "errors": dict(self.errors.most_common(5)),
        }

    async def cmd_arm(self, port: int) -> dict[str, Any]:
        self.storm_port = port
        return {"armed": len(self.clients)}

    async def cmd_status(self) -> dict[str, Any]:
        clients = self.clients.values()
        return {
            "connected": sum(
                1 for c in clients if c.conn is not None and c.conn.close_code is None
            ),
            "reconnected": sum(1 for c in clients if c.reconnected_ns),
            "dropped": sum(1 for c in clients if c.dropped_seq >= 0),
            "arrivals": len(self.arrival_seq),
        }

    async def cmd_results(self) -> dict[str, Any]:
        clients = sorted(self.clients.values(), key=lambda c: c.index)
        return {
            "index": array("q", (c.index for c in clients)).tobytes(),
            "reconnected_ns": array("q", (c.reconnected_ns for c in clients)).tobytes(),
            "dropped_seq": array("q", (c.dropped_seq for c in clients)).tobytes(),
            "attempts": sum(c.attempts for c in clients),
            "arrival_index": self.arrival_index.tobytes(),
            "arrival_seq": self.arrival_seq.tobytes(),
            "arrival_ns": self.arrival_ns.tobytes(),
            "duplicates": self.duplicates,
            "errors": dict(self.errors.most_common(5)),
        }

    async def cmd_close_all(self) -> dict[str, Any]:
        self.storm_port = None
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        pending = []
        for client in self.clients.values():
            if client.conn is not None:
                client.conn.close()
                pending.append(client.conn.closed)
        if pending:
            await asyncio.wait(pending, timeout=20)
        closed = len(self.clients)
        self.clients = {}
        return {"closed": closed}


def main(pipe: Connection, cores: frozenset[int]) -> None:
    """Process entry point (multiprocessing target)."""
    import uvloop

    system.pin(0, cores)
    system.raise_nofile()
    uvloop.run(StormWorker(pipe).run())
