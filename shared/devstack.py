"""`make run`: the whole stack on one machine, for development and demos.

Starts embedded PostgreSQL and Redis unless `DATABASE_URL`/`REDIS_URL` are given, applies
migrations, starts notifications_svc, agent_svc and the gateway as child processes with their log
lines prefixed by service name, and prints the gateway URL. From then on it supervises what it
started (`shared.supervisor`): a service or embedded server that exits without being asked is
restarted with capped, jittered backoff, and the log says so; the rest keeps running. A service
that exits before the stack was first ready stops the stack with its status instead (a broken
configuration should fail loudly, not loop). On Ctrl-C or SIGTERM it stops everything it started:
services first, then Redis and PostgreSQL. Needs no TTY.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

import httpx

from shared import infra, migrate
from shared.auth import mint_token
from shared.settings import Settings, load_or_exit
from shared.supervisor import Child, Supervisor

_NAME_WIDTH = len("notifications_svc")

# The demo user of `make run`'s console link (any UUID would do; fixed so data survives restarts).
DEMO_USER_ID = "3f0c6a8e-8d5b-4a57-9a53-0d3c1f7e2b11"


def _say(text: str) -> None:
    print(f"{'devstack':<{_NAME_WIDTH}} | {text}", flush=True)


def _pump(prefix: str, stream: IO[bytes]) -> None:
    """Copy a child's output to ours, each line prefixed (a thread per child: no TTY needed)."""
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
        sys.stdout.flush()


def _child_env(settings: Settings) -> dict[str, str]:
    return os.environ | {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SECRET_KEY": settings.secret_key,
        "INTERNAL_TOKEN": settings.internal_token,
        "PYTHONUNBUFFERED": "1",
    }


class Service:
    """One service as a supervised child: `python -m <module>` with its output prefixed."""

    def __init__(self, name: str, port: int, env: dict[str, str]) -> None:
        self.name, self.port, self._env = name, port, env
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def start(self) -> None:
        self._terminated = False
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.name],
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our signal handler, not the TTY, stops them
        )
        assert self._process.stdout is not None
        threading.Thread(
            target=_pump, args=(f"{self.name:<{_NAME_WIDTH}} |", self._process.stdout), daemon=True
        ).start()

    def exit_status(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: graceful shutdown) without waiting. Once: a second SIGTERM
        arriving after uvicorn's shutdown restored the default handler would kill it."""
        if self._process is not None and not self._terminated and self._process.poll() is None:
            self._process.terminate()
            self._terminated = True

    def stop(self) -> None:
        """SIGTERM, wait up to 20 s (SIGKILL after), and report the exit status. Idempotent."""
        self.terminate()
        process, self._process = self._process, None
        if process is None:
            return
        try:
            status = process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        _say(f"{self.name} stopped (status {status})")


class EmbeddedServer:
    """The embedded PostgreSQL or Redis as a supervised child (restarted in place: same port,
    same data)."""

    def __init__(self, name: str, server: infra.EmbeddedPostgres | infra.EmbeddedRedis) -> None:
        self.name, self._server = name, server

    def start(self) -> None:
        self._server.start()

    def exit_status(self) -> int | None:
        return self._server.exit_status()

    def stop(self) -> None:
        # Stopped by `infra.embedded_servers` when the stack ends, after the services.
        pass


def _wait_ready(services: list[Service], stop: threading.Event, timeout: float = 90) -> int | None:
    """Wait until every service's /readyz answers 200; the exit status of a service that died
    first (None when all are ready, or on timeout or stop)."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending and time.monotonic() < deadline and not stop.is_set():
        for service in list(pending):
            status = service.exit_status()
            if status is not None:
                _say(f"{service.name} exited with status {status} during start-up; stopping")
                return status or 1
            try:
                if httpx.get(f"http://127.0.0.1:{service.port}/readyz", timeout=2).is_success:
                    pending.remove(service)
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    return None


def console_link(settings: Settings, port: int) -> str:
    """The console URL; signed in as the demo user (token in the fragment, which never reaches a
    server or a log) only while the generated development secret is in use."""
    url = f"http://127.0.0.1:{port}/console"
    if os.environ.get("SECRET_KEY") or settings.jwt_algorithm != "HS256":
        return url
    return f"{url}#token={mint_token(settings, DEMO_USER_ID, 7 * 24 * 3600)}"


def run(settings: Settings) -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with infra.embedded_servers(settings) as servers:
        ready = servers.settings
        asyncio.run(migrate.apply_with_settings(ready))
        env = _child_env(ready)
        services = [
            Service("notifications_svc", ready.notifications_port, env),
            Service("agent_svc", ready.agent_port, env),
            Service("gateway", ready.gateway_port, env),
        ]
        embedded: list[Child] = [
            EmbeddedServer(name, server)
            for name, server in (("postgres", servers.postgres), ("redis", servers.redis))
            if server is not None
        ]
        supervisor = Supervisor([*embedded, *services], _say)
        try:
            for service in services:
                service.start()
            failed = _wait_ready(services, stop)
            if failed is not None:
                return failed
            if not stop.is_set():
                print(
                    f"\nready: gateway at http://127.0.0.1:{ready.gateway_port} "
                    f"(WebSocket ws://127.0.0.1:{ready.gateway_port}/api/v1/ws/<session-id>)\n"
                    "get a token with: make token USER=<user-uuid>   stop with Ctrl-C\n"
                    f"console: {console_link(ready, ready.gateway_port)}\n",
                    flush=True,
                )
            supervisor.run(stop)
            return 0
        finally:
            # Every service gets SIGTERM at once, then each is awaited: shutdowns overlap.
            for service in services:
                service.terminate()
            supervisor.stop_all()


def main() -> int:
    return run(load_or_exit())


if __name__ == "__main__":
    sys.exit(main())
