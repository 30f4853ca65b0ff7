"""Real service processes for tests: `python -m <service>` on a free loopback port.

A `ServiceProcess` starts the module with the test environment, waits until `/readyz` (or
`/healthz`) answers 200, and is stopped (SIGTERM, then SIGKILL) by its owner. Output goes to a log
file whose tail is attached to start-up failures, so a broken service explains itself.
`launch` and `terminate` are the same steps for any other server a test runs (nginx);
`terminate_all` / `ServiceProcess.stop_all` stop many at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from shared.infra import free_port


def launch(
    command: list[str],
    *,
    log_path: Path,
    ready_url: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `command` (output appended to `log_path`) and return once `ready_url` answers 200.

    Raises `RuntimeError` with the log's tail if the process exits first or is not ready within
    `timeout` seconds (it is then stopped).
    """
    name = Path(command[0]).name if command[0] != sys.executable else command[-1]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    terminate(process)
    raise RuntimeError(f"{name} not ready in {timeout}s:\n{_tail(log_path)}")


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 20) -> int | None:
    """SIGTERM and wait; SIGKILL if it does not exit in `timeout`. Idempotent: returns the exit
    status (None if there was no process)."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def terminate_all(processes: Iterable[subprocess.Popen[bytes] | None], timeout: float = 20) -> None:
    """`terminate` of several processes at once: every SIGTERM first, then the waits (one
    deadline for all), so their shutdowns overlap instead of adding up."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log_path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServiceProcess:
    def __init__(self, module: str, env: dict[str, str], log_dir: Path, port_var: str) -> None:
        self.module = module
        self.port = free_port()
        self.env = env | {port_var: str(self.port), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_dir / f"{module}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, *, wait_path: str = "/readyz", timeout: float = 60) -> ServiceProcess:
        self.process = launch(
            [sys.executable, "-m", self.module],
            env=self.env,
            log_path=self.log_path,
            ready_url=self.url + wait_path,
            timeout=timeout,
        )
        return self

    def log(self, tail: int = 60) -> str:
        """The last `tail` lines the process wrote."""
        return _tail(self.log_path, tail)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait (graceful shutdown); SIGKILL if it does not exit in `timeout`."""
        return terminate(self.process, timeout)

    @staticmethod
    def stop_all(processes: Iterable[ServiceProcess], timeout: float = 20) -> None:
        """`stop` of several at once (`terminate_all`): teardowns wait for the slowest, not
        for the sum."""
        terminate_all((p.process for p in processes), timeout)

    def kill(self) -> None:
        """SIGKILL: the process dies without any cleanup (crash simulation)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
