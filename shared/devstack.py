"""`make run`: the whole stack on one machine, for development and demos.

Starts embedded PostgreSQL and Redis unless `DATABASE_URL`/`REDIS_URL` are given, applies
migrations, starts notifications_svc, agent_svc and the gateway as child processes with their log
lines prefixed by service name, prints the gateway URL, and on Ctrl-C or SIGTERM stops everything
it started (services first, then Redis and PostgreSQL). If a service exits on its own, the stack
stops with that service's status, rather than limping on half-started. Needs no TTY.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

import httpx

from shared import infra, migrate
from shared.auth import mint_token
from shared.settings import Settings, load_or_exit

# The demo user of `make run`'s console link (any UUID would do; fixed so data survives restarts).
DEMO_USER_ID = "3f0c6a8e-8d5b-4a57-9a53-0d3c1f7e2b11"


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int


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


def _wait_ready(services: list[Service], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending and time.monotonic() < deadline:
        for service in list(pending):
            try:
                if httpx.get(f"http://127.0.0.1:{service.port}/readyz", timeout=2).is_success:
                    pending.remove(service)
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    return not pending


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
    with infra.embedded_infra(settings) as ready:
        asyncio.run(migrate.apply_with_settings(ready))
        services = [
            Service("notifications_svc", "notifications_svc", ready.notifications_port),
            Service("agent_svc", "agent_svc", ready.agent_port),
            Service("gateway", "gateway", ready.gateway_port),
        ]
        width = max(len(s.name) for s in services)
        children: list[tuple[Service, subprocess.Popen[bytes]]] = []
        try:
            for service in services:
                child = subprocess.Popen(
                    [sys.executable, "-m", service.module],
                    env=_child_env(ready),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # our signal handler, not the TTY, stops them
                )
                assert child.stdout is not None
                threading.Thread(
                    target=_pump, args=(f"{service.name:<{width}} |", child.stdout), daemon=True
                ).start()
                children.append((service, child))
            if _wait_ready(services):
                print(
                    f"\nready: gateway at http://127.0.0.1:{ready.gateway_port} "
                    f"(WebSocket ws://127.0.0.1:{ready.gateway_port}/api/v1/ws/<session-id>)\n"
                    "get a token with: make token USER=<user-uuid>   stop with Ctrl-C\n"
                    f"console: {console_link(ready, ready.gateway_port)}\n",
                    flush=True,
                )
            while not stop.wait(0.5):
                for service, child in children:
                    if child.poll() is not None:
                        print(
                            f"{service.name} exited with status {child.returncode}; stopping",
                            flush=True,
                        )
                        return child.returncode or 1
            return 0
        finally:
            for _, child in reversed(children):
                if child.poll() is None:
                    child.terminate()
            for _, child in children:
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def main() -> int:
    return run(load_or_exit())


if __name__ == "__main__":
    sys.exit(main())
