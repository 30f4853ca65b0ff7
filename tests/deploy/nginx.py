"""Debian's nginx running deploy/nginx.conf on loopback, in front of test gateway processes.

The test copy of the configuration is made by `deploy/local_nginx.py`'s `render` — the same code
an operator runs to put nginx in front of local gateways — which substitutes only what must differ
on a test machine: the listen address, the upstream's `server gateway:8000` line and the temp
paths. Everything else (upgrade handling, buffering, timeouts, limits, error pages) is the
deployed configuration itself.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from shared.infra import free_port
from tests.support import contract
from tests.support.processes import launch, terminate

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def load_script(name: str) -> ModuleType:
    """A script of deploy/ (they sit beside the files they serve, not in a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_nginx = load_script("local_nginx")
nginx_binary = local_nginx.nginx_binary


class Nginx:
    """One nginx master process on a free loopback port; `stop` is idempotent."""

    def __init__(self, workdir: Path, upstreams: list[int], binary: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        contract.EDGE_PORTS.add(self.port)  # its own 404s for /internal/ are by design
        self.binary = binary
        self.log_path = workdir / "nginx.log"
        local_nginx.prepare(workdir, port=self.port, upstreams=upstreams)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> Nginx:
        self._process = launch(
            local_nginx.command(self.binary, self.workdir),
            log_path=self.log_path,
            ready_url=self.url + "/nginx-health",
            timeout=timeout,
        )
        return self

    def log(self) -> str:
        """Everything nginx wrote: the access log (stdout) and the error log (stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def access_lines(self, path: str, at_least: int = 0, timeout: float = 5) -> list[str]:
        """Access-log lines of requests whose path is `path`, waiting until there are `at_least`
        (nginx writes a line just after the response, so a client may read it first)."""
        # `] "GET /path HTTP/1.1"`: the access-log format; error-log lines quote the request too.
        access = re.compile(r'\] "[A-Z]+ ' + re.escape(path) + r" HTTP/")
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            complete = text[: text.rfind("\n") + 1]  # a line being written is not read yet
            lines = [line for line in complete.splitlines() if access.search(line)]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        terminate(process, 10)  # SIGTERM is nginx's fast shutdown: open WebSockets are cut


# `start_nginx([port, ...])`: the factory fixture of tests/conftest.py.
StartNginx = Callable[[list[int]], Nginx]


def upstream_ports(lines: list[str]) -> list[int]:
    """The gateway port each logged request finally went to (the last address tried)."""
    ports = []
    for line in lines:
        match = re.search(r" upstream=(.*?) upstream_status=", line)
        if match and match[1] != "-":
            ports.append(int(match[1].split(",")[-1].strip().rsplit(":", 1)[1]))
    return ports
