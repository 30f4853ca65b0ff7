"""Real service processes for tests: `python -m <service>` on a free loopback port.

A `ServiceProcess` starts the module with the test environment, waits until `/readyz` (or
`/healthz`) answers 200, and is stopped (SIGTERM, then SIGKILL) by its owner. Output goes to a log
file whose tail is attached to start-up failures, so a broken service explains itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.infra import free_port


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
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + wait_path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.module} not ready in {timeout}s:\n{self.log()}")

    def log(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait (graceful shutdown); SIGKILL if it does not exit in `timeout`."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def kill(self) -> None:
        """SIGKILL: the process dies without any cleanup (crash simulation)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
