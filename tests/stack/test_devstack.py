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

from shared.infra import free_port


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

        stack.send_signal(signal.SIGTERM)
        assert stack.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        if stack.poll() is None:
            stack.kill()
        log.close()
