"""Load generator worker: a process that holds thousands of WebSocket connections and records
when each benchmark frame arrives.

The orchestrator drives each worker over a `multiprocessing` pipe with small command tuples and
gets plain data back (no shared state). A worker runs one uvloop event loop; connections are
`bench.wsclient.ClientConnection`s feeding one `Recorder`, so receiving a frame costs a frame
parse, a `bytes.find` and an array append; its arrival time is when the kernel received it. A
worker can also be a stall probe: one connection that sends a WebSocket ping every few
milliseconds and records the round trips (the server's event loop answers pings itself, so a
stalled loop shows as a slow pong).

Commands (`(name, *args)` in, one reply out):
  connect(targets, concurrency, ready_timeout) -> dict   open connections (a connection counts
                             once its first frame arrived); reports failed targets by position
  received()      -> dict    benchmark frames recorded and not yet collected
  targeted(step)  -> dict    latencies and distinct count of step `step`'s targeted frames
  broadcast(k)    -> dict    latencies of broadcast `k`
  probe_frames(k) -> dict    send times and latencies of the probe frames sent during broadcast `k`
  status()        -> dict    open/closed counts, close codes, frames seen, reads the kernel
                             had not stamped (timed when read instead)
  probe(interval) -> dict    start (or restart) the stall probe on the first connection
  probe_read()    -> dict    RTTs since the last probe_read
  close_all(timeout) -> dict close every connection and wait for the sockets to go
  stop()          -> None    exit
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
import time
from array import array
from asyncio import FIRST_COMPLETED
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from bench import marks, system
from bench.wsclient import OP_PING, OP_PONG, ClientConnection, connect


class Recorder:
    """Receives every message of every connection (the `wsclient` sink)."""

    def __init__(self) -> None:
        self.targeted: dict[int, tuple[array[int], set[int]]] = {}
        self.broadcasts: dict[int, array[int]] = {}
        # broadcast k -> (send times, latencies) of the targeted frames sent while it ran
        self.probe_frames: dict[int, tuple[array[int], array[int]]] = {}
        self.other_frames = 0
        self.pongs: array[int] = array("q")

    def __call__(self, conn: ClientConnection, opcode: int, payload: bytes, now: int) -> None:
        if opcode == OP_PONG:
            if len(payload) == 8:
                self.pongs.append(now - struct.unpack("!q", payload)[0])
            return
        mark = marks.parse(payload)
        if mark is None:
            self.other_frames += 1
            return
        kind, step, k, sent = mark
        if kind == marks.TARGETED:
            entry = self.targeted.get(step)
            if entry is None:
                entry = self.targeted[step] = (array("q"), set())
            entry[0].append(now - sent)
            entry[1].add(k)
        elif kind == marks.PROBE:
            probe = self.probe_frames.get(k)
            if probe is None:
                probe = self.probe_frames[k] = (array("q"), array("q"))
            probe[0].append(sent)
            probe[1].append(now - sent)
        else:
            self.broadcasts.setdefault(k, array("q")).append(now - sent)


class PipeWorker:
    """A load-side process's command loop: commands arrive on a `multiprocessing` pipe as tuples
    `(name, *args)`, each answered on the pipe with what `cmd_<name>(*args)` returns; `("stop",)`
    or the pipe closing ends the loop, after `shutdown()`."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self._commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # A thread blocks on the pipe: the loop's add_reader would make the pipe non-blocking,
        # and multiprocessing's recv cannot resume a half-read message.
        threading.Thread(target=self._read_pipe, args=(loop,), daemon=True).start()
        try:
            while True:
                command = await self._commands.get()
                name, args = command[0], command[1:]
                if name == "stop":
                    return
                reply = await getattr(self, f"cmd_{name}")(*args)
                self.pipe.send(reply)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Release what the commands opened (the loop is ending)."""

    def _read_pipe(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):
                command = ("stop",)
            loop.call_soon_threadsafe(self._commands.put_nowait, command)
            if command[0] == "stop":
                return


class Worker(PipeWorker):
    def __init__(self, pipe: Connection, host: str, port: int) -> None:
        super().__init__(pipe)
        self.host, self.port = host, port
        self.recorder = Recorder()
        self.connections: list[ClientConnection] = []
        self.errors: Counter[str] = Counter()
        self._probe: asyncio.Task[None] | None = None

    async def shutdown(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for conn in self.connections:
            conn.close()

    async def cmd_connect(
        self, targets: list[str], concurrency: int, ready_timeout: float
    ) -> dict[str, Any]:
        """Open one connection per target path. A connection counts as open once its first
        frame (`connection_established`) arrived — the server has subscribed it by then; one
        closed or silent before that is a failure."""
        started = time.monotonic()
        gate = asyncio.Semaphore(concurrency)
        before = len(self.connections)
        failed: list[int] = []
        errors = self.errors

        async def one(position: int, target: str) -> None:
            async with gate:
                try:
                    conn = await connect(self.host, self.port, target, self.recorder, position)
                except Exception as exc:
                    errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                    failed.append(position)
                    return
                waiters: list[asyncio.Future[Any]] = [conn.greeted, conn.closed]
                await asyncio.wait(waiters, timeout=ready_timeout, return_when=FIRST_COMPLETED)
            if conn.greeted.done():
                self.connections.append(conn)
                return
            errors[f"closed {conn.close_code} before the first frame" if conn.closed.done()
                   else "no first frame in time"] += 1  # fmt: skip
            conn.close()
            failed.append(position)

        await asyncio.gather(*(one(i, target) for i, target in enumerate(targets)))
        return {
            "opened": len(self.connections) - before,
            "failed": len(failed),
            "failed_positions": sorted(failed),
            "seconds": time.monotonic() - started,
            "errors": dict(errors.most_common(5)),
        }

    async def cmd_targeted(self, step: int) -> dict[str, Any]:
        latencies, keys = self.recorder.targeted.pop(step, (array("q"), set()))
        return {"latencies": latencies.tobytes(), "count": len(latencies), "keys": sorted(keys)}

    async def cmd_broadcast(self, k: int) -> dict[str, Any]:
        latencies = self.recorder.broadcasts.pop(k, array("q"))
        return {"latencies": latencies.tobytes(), "count": len(latencies)}

    async def cmd_probe_frames(self, k: int) -> dict[str, Any]:
        sent, latencies = self.recorder.probe_frames.pop(k, (array("q"), array("q")))
        return {"sent": sent.tobytes(), "latencies": latencies.tobytes()}

    async def cmd_received(self) -> dict[str, int]:
        """How many benchmark frames are waiting to be collected (to know when a step drained)."""
        return {
            "targeted": sum(len(lat) for lat, _ in self.recorder.targeted.values()),
            "broadcast": sum(len(lat) for lat in self.recorder.broadcasts.values()),
        }

    async def cmd_status(self) -> dict[str, Any]:
        codes = Counter(c.close_code for c in self.connections if c.close_code is not None)
        return {
            "open": sum(1 for c in self.connections if c.close_code is None),
            "closed": sum(codes.values()),
            "close_codes": {str(code): n for code, n in codes.items()},
            "other_frames": self.recorder.other_frames,
            "unstamped": sum(c.unstamped for c in self.connections),
        }

    async def cmd_probe(self, interval: float) -> dict[str, Any]:
        if self._probe is not None:
            self._probe.cancel()
        self.recorder.pongs = array("q")
        self._probe = asyncio.create_task(self._ping_loop(interval))
        return {"probing": bool(self.connections)}

    async def _ping_loop(self, interval: float) -> None:
        while self.connections:
            self.connections[0].send(OP_PING, struct.pack("!q", time.monotonic_ns()))
            await asyncio.sleep(interval)

    async def cmd_probe_read(self) -> dict[str, Any]:
        pongs, self.recorder.pongs = self.recorder.pongs, array("q")
        return {"rtts": pongs.tobytes()}

    async def cmd_close_all(self, timeout: float) -> dict[str, Any]:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        for conn in self.connections:
            conn.close()
        pending = [c.closed for c in self.connections if not c.closed.done()]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), timeout)
        closed = len(self.connections)
        self.connections = []
        self.errors.clear()
        self.recorder = Recorder()
        return {"closed": closed}


def main(pipe: Connection, host: str, port: int, cores: frozenset[int], priority: int = 0) -> None:
    """Process entry point (multiprocessing target). A negative `priority` (the stall probe's)
    lets the process run ahead of the busy generator on the shared core, where permitted."""
    import uvloop

    system.pin(0, cores)
    if priority:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, priority)
    system.raise_nofile()
    uvloop.run(Worker(pipe, host, port).run())
