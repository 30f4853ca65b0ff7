"""`make run` (`python -m shared.devstack`): the whole stack from nothing, ready within the
deadline; every process it started comes back after a kill -9 while a client keeps receiving
every notification once, in order; SIGTERM then stops everything with status 0.

One real stack (its own DATA_DIR and free ports) is shared by the module's tests, in file order,
because starting it is the slow part; the last test stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from shared import devstack
from shared.auth import TokenVerifier, mint_token
from shared.infra import free_port
from shared.settings import Settings
from tests.conftest import TEST_INTERNAL_TOKEN, TEST_SECRET_KEY

INTERNAL = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
SERVICES = ("notifications_svc", "agent_svc", "gateway")
VICTIMS = (*SERVICES, "redis", "postgres")


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    data_dir: Path
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


def _child_pid(stack: Stack, name: str) -> int | None:
    """The pid of the stack's direct child running `name` (a service, redis or postgres)."""
    for child in psutil.Process(stack.process.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if not cmdline or child.status() == psutil.STATUS_ZOMBIE:
            continue
        if name in SERVICES and cmdline[-2:] == ["-m", name]:
            return int(child.pid)
        # The servers rewrite their command lines; their process names stay.
        if (name, child.name()) in (("redis", "redis-server"), ("postgres", "postgres")):
            return int(child.pid)
    return None


def _all_ready(stack: Stack) -> bool:
    for service in SERVICES:
        try:
            if httpx.get(stack.url(service) + "/readyz", timeout=2).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
    return True


def _until(condition: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll `check()` until it is true; fail naming `condition` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {condition}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`python -m shared.devstack` with its own DATA_DIR and free ports, ready."""
    root = tmp_path_factory.mktemp("devstack")
    ports = {name: free_port() for name in SERVICES}
    env = {
        "PATH": os.environ["PATH"],
        "DATA_DIR": str(root / "data"),
        "SECRET_KEY": TEST_SECRET_KEY,
        "INTERNAL_TOKEN": TEST_INTERNAL_TOKEN,
        "GATEWAY_PORT": str(ports["gateway"]),
        "NOTIFICATIONS_PORT": str(ports["notifications_svc"]),
        "AGENT_PORT": str(ports["agent_svc"]),
    }
    log_path = root / "stack.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.devstack"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    started = Stack(process, ports, root / "data", log_path, env)
    try:
        deadline = time.monotonic() + 120
        while not _all_ready(started):
            assert process.poll() is None, started.log()
            assert time.monotonic() < deadline, started.log()
            time.sleep(0.3)
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def test_stack_starts_and_serves(stack: Stack) -> None:
    """Started in the background (no TTY): all three /readyz answer 200, the log names the
    gateway URL and the services, and the stack runs services, PostgreSQL and Redis."""
    output = stack.log()
    assert f"http://127.0.0.1:{stack.ports['gateway']}" in output
    assert "gateway" in output and "notifications_svc" in output
    # SECRET_KEY is set (as in a deployment): the console link is the bare page, which asks for
    # a token (the link with a token is checked below, without the process). The stack prints
    # it once it saw every /readyz answer, a moment after this test may have.
    _until("the console link printed", lambda: "console: " in stack.log(), 30)
    assert f"console: http://127.0.0.1:{stack.ports['gateway']}/console\n" in stack.log()
    console = httpx.get(stack.url("gateway") + "/console", timeout=5)
    assert console.status_code == 200
    for name in VICTIMS:
        assert _child_pid(stack, name) is not None, name


@dataclass
class ResumingClient:
    """A real `websockets` client on one session that reconnects after any drop (or refused
    connect) with `?last_seq=` and records every notification seq it receives."""

    url: str
    seqs: list[int] = field(default_factory=list)
    reconnects: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def _open(self) -> ClientConnection:
        while True:
            # Every reconnect resumes, from 0 if nothing arrived yet (without last_seq the
            # gateway would start from "now" and skip what was created meanwhile).
            query = (
                f"&last_seq={self.seqs[-1] if self.seqs else 0}" if self.connected.is_set() else ""
            )
            try:
                ws = await connect(self.url + query, compression=None, open_timeout=5)
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if frame["type"] == "connection_established":
                    self.connected.set()
                    return ws
                await ws.close()
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                pass
            await asyncio.sleep(0.1)  # the gateway is restarting: try again shortly

    async def run(self) -> None:
        ws = await self._open()
        try:
            while True:
                try:
                    frame = json.loads(await ws.recv())
                except ConnectionClosed:
                    self.reconnects += 1
                    ws = await self._open()
                    continue
                if frame["type"] == "notification":
                    self.seqs.append(frame["data"]["seq"])
        finally:
            await ws.close()


@dataclass
class Producer:
    """Creates notifications one after another, each retried with its own idempotency key until
    answered (the documented producer contract), and records the committed seqs. It stops only
    between creates: cancelling it inside one could leave a committed notification unrecorded."""

    url: str
    user: uuid.UUID
    created: list[int] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def create(self, http: httpx.AsyncClient, index: int) -> None:
        key = f"devstack-test-{self.user}-{index}"
        body = {"user_id": str(self.user), "title": f"n{index}", "content": "c", "type": "test"}
        deadline = time.monotonic() + 60
        while True:
            try:
                response = await http.post(
                    self.url + "/internal/v1/notifications",
                    json=body,
                    headers=INTERNAL | {"Idempotency-Key": key},
                )
                self.statuses.add(response.status_code)
                if response.status_code in (200, 201):
                    self.created.append(response.json()["seq"])
                    return
            except httpx.TransportError:
                pass  # notifications_svc is restarting, or died with our request
            assert time.monotonic() < deadline, f"create {index} never succeeded"
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            index = 0
            while not self.stopping.is_set():
                await self.create(http, index)
                index += 1
                await asyncio.sleep(0.05)


async def _wait(condition: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {condition}"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(300)
async def test_each_killed_process_comes_back_and_clients_lose_nothing(stack: Stack) -> None:
    """kill -9 of each service, the embedded Redis and the embedded PostgreSQL in turn, under a
    steady stream of creates: each is restarted (a new process, the log says so), every /readyz
    answers 200 again, and a resuming WebSocket client ends with every created notification
    exactly once, in order. The producer sees no 500."""
    user = uuid.uuid4()
    token = mint_token(Settings.from_env(stack.env), user, 3600)
    client = ResumingClient(
        f"ws://127.0.0.1:{stack.ports['gateway']}/api/v1/ws/{uuid.uuid4()}?token={token}"
    )
    producer = Producer(stack.url("notifications_svc"), user)
    tasks = [asyncio.create_task(client.run())]
    async with asyncio.timeout(30):
        await client.connected.wait()  # live before the first create: it must see every one
    tasks.append(asyncio.create_task(producer.run()))
    try:
        # Each check is awaited within its own iteration, so closing over the loop's variables
        # is safe (hence the B023 exemptions).
        for victim in VICTIMS:
            before = len(producer.created)
            await _wait(
                "notifications flowing",
                lambda: len(producer.created) >= before + 3,  # noqa: B023
                30,
            )
            pid = _child_pid(stack, victim)
            assert pid is not None, victim
            os.kill(pid, signal.SIGKILL)
            await _wait(
                f"{victim} restarted",
                lambda: _child_pid(stack, victim) not in (None, pid),  # noqa: B023
                60,
            )
            await asyncio.to_thread(
                _until, f"all ready after {victim}", lambda: _all_ready(stack), 60
            )
            after = len(producer.created)
            await _wait(
                f"{victim}: notifications flowing again",
                lambda: len(producer.created) > after,  # noqa: B023
                60,
            )
            target = producer.created[-1]
            await _wait(
                f"{victim}: client caught up to seq {target}",
                lambda: bool(client.seqs) and client.seqs[-1] >= target,  # noqa: B023
                60,
            )
            assert f"{victim} exited with status -9; restarting" in stack.log()
    finally:
        producer.stopping.set()
        await asyncio.gather(tasks[1], return_exceptions=True)
    try:
        final = producer.created[-1]
        await _wait(f"client received seq {final}", lambda: client.seqs[-1] >= final, 30)
    finally:
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
    assert client.seqs == producer.created
    assert client.reconnects >= 1  # the gateway's kill dropped it at least
    assert 500 not in producer.statuses
    for victim in VICTIMS:
        assert f"{victim} restarted" in stack.log()


def test_sigterm_stops_everything_cleanly(stack: Stack) -> None:
    """SIGTERM: the stack exits 0, every service reports status 0, no process of the stack is
    left (services, PostgreSQL, Redis) and the PostgreSQL data folder is unlocked."""
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert len(children) >= 5
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(60) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    output = stack.log()
    for service in SERVICES:
        assert f"{service} stopped (status 0)" in output
    assert not (stack.data_dir / "postgres" / "postmaster.pid").exists()


async def test_console_link_signs_in_only_with_the_development_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a generated secret the link carries a token for the demo user; with SECRET_KEY set
    (a real deployment's key) it is the bare page, which asks for a token."""
    monkeypatch.delenv("SECRET_KEY", raising=False)
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    link = devstack.console_link(settings, 8000)
    page, _, token = link.partition("#token=")
    assert page == "http://127.0.0.1:8000/console"
    assert str((await TokenVerifier(settings).verify(token)).user_id) == devstack.DEMO_USER_ID
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    assert devstack.console_link(settings, 8000) == "http://127.0.0.1:8000/console"
