"""The load side of a WebSocket benchmark: generator workers, a stall probe and a publisher, each a
process pinned to the load cores, driven from the orchestrator.

`LoadSide` is a context manager: entering starts the processes, leaving stops them (and they
close their sockets). Calls are synchronous; `ask_all` sends one command to every worker before
collecting the replies, so workers work in parallel.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from array import array
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from bench import loadgen, publisher

_CTX = multiprocessing.get_context("spawn")
_REPLY_TIMEOUT = 120.0
PROBE_PRIORITY = -10  # the probe must not wait behind the generator it shares a core with


class WorkerError(RuntimeError):
    """A load-side process died or did not answer in time."""


class Remote:
    """One load-side process and the pipe to it."""

    def __init__(self, name: str, target: Any, args: tuple[Any, ...]) -> None:
        self.pipe, child = _CTX.Pipe()
        self.process: BaseProcess = _CTX.Process(
            target=target, args=(child, *args), name=name, daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, *command: Any) -> None:
        self.pipe.send(command)

    def reply(self, timeout: float = _REPLY_TIMEOUT) -> Any:
        if not self.pipe.poll(timeout):
            raise WorkerError(f"{self.process.name} did not answer within {timeout:.0f}s")
        try:
            return self.pipe.recv()
        except EOFError:
            raise WorkerError(f"{self.process.name} exited ({self.process.exitcode})") from None

    def ask(self, *command: Any, timeout: float = _REPLY_TIMEOUT) -> Any:
        self.send(*command)
        return self.reply(timeout)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send(("stop",))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()


class LoadSide:
    def __init__(
        self, host: str, port: int, redis_url: str, workers: int, cores: frozenset[int]
    ) -> None:
        self.host, self.port = host, port
        self.redis_url = redis_url
        self.worker_count = workers
        self.cores = cores
        self.workers: list[Remote] = []
        self.probe: Remote | None = None
        self.publisher: Remote | None = None

    def __enter__(self) -> LoadSide:
        try:
            for i in range(self.worker_count):
                self.workers.append(
                    Remote(f"loadgen-{i}", loadgen.main, (self.host, self.port, self.cores))
                )
            self.probe = Remote(
                "probe", loadgen.main, (self.host, self.port, self.cores, PROBE_PRIORITY)
            )
            self.publisher = Remote("publisher", publisher.main, (self.redis_url, self.cores))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for remote in [*self.workers, self.probe, self.publisher]:
            if remote is not None:
                remote.stop()
        self.workers, self.probe, self.publisher = [], None, None

    @property
    def generator_pids(self) -> list[int]:
        """Every load-side process: workers, probe and publisher."""
        remotes = [*self.workers, self.probe, self.publisher]
        return [remote.pid for remote in remotes if remote is not None]

    def ask_all(self, *command: Any, timeout: float = _REPLY_TIMEOUT) -> list[Any]:
        """Send `command` to every generator worker (not the probe), then gather the replies."""
        for worker in self.workers:
            worker.send(*command)
        return [worker.reply(timeout) for worker in self.workers]

    def connect(
        self, targets: list[str], concurrency: int, ready_timeout: float = 30.0
    ) -> dict[str, Any]:
        """Spread `targets` (URL paths) over the workers round-robin and open them all.
        `failed` lists the indexes (into `targets`) of those that could not be opened."""
        started = time.monotonic()
        workers = len(self.workers)
        for i, worker in enumerate(self.workers):
            worker.send("connect", targets[i::workers], concurrency, ready_timeout)
        replies = [worker.reply() for worker in self.workers]
        errors: dict[str, int] = {}
        for reply in replies:
            for message, count in reply["errors"].items():
                errors[message] = errors.get(message, 0) + count
        failed = sorted(
            i + workers * p for i, r in enumerate(replies) for p in r["failed_positions"]
        )
        return {
            "seconds": time.monotonic() - started,
            "opened": sum(r["opened"] for r in replies),
            "failed": failed,
            "errors": errors,
        }

    def status(self) -> dict[str, Any]:
        replies = self.ask_all("status")
        codes: dict[str, int] = {}
        for reply in replies:
            for code, count in reply["close_codes"].items():
                codes[code] = codes.get(code, 0) + count
        return {
            "open": sum(r["open"] for r in replies),
            "closed": sum(r["closed"] for r in replies),
            "close_codes": codes,
            "unstamped": sum(r["unstamped"] for r in replies),
        }

    def targeted(self, step: int) -> tuple[array[int], int]:
        """Latencies (ns) of step `step`'s targeted frames and how many distinct ones arrived."""
        latencies: array[int] = array("q")
        distinct = 0
        for reply in self.ask_all("targeted", step):
            latencies.frombytes(reply["latencies"])
            distinct += len(reply["keys"])
        return latencies, distinct

    def received(self, kind: str) -> int:
        return sum(reply[kind] for reply in self.ask_all("received"))

    def broadcast_latencies(self, k: int) -> array[int]:
        latencies: array[int] = array("q")
        for reply in self.ask_all("broadcast", k):
            latencies.frombytes(reply["latencies"])
        return latencies

    def probe_frames(self, k: int) -> tuple[array[int], array[int]]:
        """Send times and latencies (ns) of the probe frames sent during broadcast `k`."""
        assert self.probe is not None
        reply = self.probe.ask("probe_frames", k)
        sent: array[int] = array("q")
        latencies: array[int] = array("q")
        sent.frombytes(reply["sent"])
        latencies.frombytes(reply["latencies"])
        return sent, latencies

    def add_probe_connection(self, target: str) -> None:
        """Open a second connection in the probe process (it receives the probe frames; the
        probe's first connection keeps pinging)."""
        assert self.probe is not None
        reply = self.probe.ask("connect", [target], 1, 10.0)
        if reply["opened"] != 1:
            raise WorkerError(f"probe connection could not connect: {reply['errors']}")

    def start_probe(self, target: str, interval: float) -> None:
        assert self.probe is not None
        reply = self.probe.ask("connect", [target], 1, 10.0)
        if reply["opened"] != 1:
            raise WorkerError(f"stall probe could not connect: {reply['errors']}")
        self.probe.ask("probe", interval)

    def probe_rtts(self) -> array[int]:
        """Ping round trips (ns) since the previous call."""
        assert self.probe is not None
        rtts: array[int] = array("q")
        rtts.frombytes(self.probe.ask("probe_read")["rtts"])
        return rtts

    def publish(self, *command: Any, timeout: float = _REPLY_TIMEOUT) -> Any:
        assert self.publisher is not None
        return self.publisher.ask(*command, timeout=timeout)

    def close_all(self, timeout: float = 20.0) -> None:
        self.ask_all("close_all", timeout)
        if self.probe is not None:
            self.probe.ask("close_all", timeout)
