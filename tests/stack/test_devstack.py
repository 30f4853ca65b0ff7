"""`make run`: the whole stack from nothing, ready within the deadline, gone after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from shared import devstack
from shared.auth import TokenVerifier
from shared.infra import free_port
from shared.settings import Settings


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_stack_starts_serves_and_stops(tmp_path: Path) -> None:
    """Started in the background (no TTY), all three /readyz answer 200; SIGTERM leaves no
    process of the stack running (services, PostgreSQL, Redis)."""
    ports = {name: free_port() for name in ("GATEWAY_PORT", "NOTIFICATIONS_PORT", "AGENT_PORT")}
    env = {
        "PATH": os.environ["PATH"],
        "DATA_DIR": str(tmp_path / "data"),
        **{k: str(v) for k, v in ports.items()},
    }
    log = open(tmp_path / "stack.log", "wb")  # noqa: SIM115 - closed in finally
    stack = subprocess.Popen(
        [sys.executable, "-m", "shared.devstack"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        pending = set(ports.values())
        while pending and time.monotonic() < deadline:
            assert stack.poll() is None, (tmp_path / "stack.log").read_text()
            for port in list(pending):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        pending.discard(port)
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        assert not pending, (tmp_path / "stack.log").read_text()
        children = _descendants(stack.pid)
        assert len(children) >= 5  # three services, postgres (and its workers), redis
        output = (tmp_path / "stack.log").read_text()
        assert f"http://127.0.0.1:{ports['GATEWAY_PORT']}" in output
        assert "gateway" in output and "notifications_svc" in output
        _check_console_link(tmp_path / "stack.log", ports["GATEWAY_PORT"])

        stack.send_signal(signal.SIGTERM)
        assert stack.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        if stack.poll() is None:
            stack.kill()
        log.close()


def _check_console_link(log_path: Path, port: int) -> None:
    """The printed console link opens the page, and its fragment's token is accepted."""
    deadline = time.monotonic() + 30
    while "console: " not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    link = log_path.read_text().split("console: ", 1)[1].split()[0]
    page, _, token = link.partition("#token=")
    assert page == f"http://127.0.0.1:{port}/console"
    assert httpx.get(page, timeout=5).status_code == 200
    listed = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/notifications",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert listed.status_code == 200, listed.text


def test_console_link_signs_in_only_with_the_development_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a generated secret the link carries a token for the demo user; with SECRET_KEY set
    (a real deployment's key) it is the bare page, which asks for a token."""
    monkeypatch.delenv("SECRET_KEY", raising=False)
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    link = devstack.console_link(settings, 8000)
    page, _, token = link.partition("#token=")
    assert page == "http://127.0.0.1:8000/console"
    assert str(TokenVerifier(settings).verify(token).user_id) == devstack.DEMO_USER_ID
    monkeypatch.setenv("SECRET_KEY", "s" * 40)
    assert devstack.console_link(settings, 8000) == "http://127.0.0.1:8000/console"
