"""Debian's nginx running deploy/nginx.conf on loopback, in front of test gateway processes.

`render` turns the deployed file into a test copy by substituting only what must differ on a test
machine: the listen address, the upstream's `server gateway:8000` line (one line per test
gateway, same parameters), and the temp paths (nginx's compiled defaults may not be writable).
Everything else — upgrade handling, buffering, timeouts, limits, error pages — is the deployed
configuration itself. Each substitution must match exactly once, so an edit of nginx.conf that
breaks the test's assumptions fails loudly instead of silently testing something else.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from shared.infra import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    """Path of the nginx executable (Debian installs it in /usr/sbin, not always on PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _replace_once(pattern: str, replacement: str, text: str) -> str:
    result, count = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"deploy/nginx.conf: expected one match of {pattern!r}, got {count}")
    return result


def render(source: str, *, port: int, upstreams: list[int], workdir: Path) -> str:
    """The test copy of `source`: listen on 127.0.0.1:`port`, balance over `upstreams`."""
    text = _replace_once(r"^(\s*)listen 8080;$", f"    listen 127.0.0.1:{port};", source)
    match = re.search(r"^(\s*)server gateway:8000( [^;]*)?;$", text, flags=re.MULTILINE)
    if match is None:
        raise AssertionError("deploy/nginx.conf: no `server gateway:8000 ...;` line in upstream")
    indent, params = match[1], match[2] or ""
    servers = "\n".join(f"{indent}server 127.0.0.1:{p}{params};" for p in upstreams)
    text = text[: match.start()] + servers + text[match.end() :]
    temp = "\n".join(f"    {name}_temp_path {workdir / name};" for name in _TEMP_DIRS)
    return _replace_once(r"^http \{$", "http {\n" + temp, text)


class Nginx:
    """One nginx master process on a free loopback port; `stop` is idempotent."""

    def __init__(self, workdir: Path, upstreams: list[int], binary: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.binary = binary
        self.conf = workdir / "nginx.conf"
        self.log_path = workdir / "nginx.log"
        self.conf.write_text(
            render(NGINX_CONF.read_text(), port=self.port, upstreams=upstreams, workdir=workdir)
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _globals(self) -> str:
        directives = f"daemon off; pid {self.workdir / 'nginx.pid'};"
        if os.geteuid() == 0:
            # Workers drop to an unprivileged user; Debian has no group named "nobody".
            directives += " user nobody nogroup;"
        return directives

    def start(self, timeout: float = 15) -> Nginx:
        for name in _TEMP_DIRS:
            (self.workdir / name).mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        command = [self.binary, "-e", "stderr", "-p", str(self.workdir), "-c", str(self.conf)]
        self._process = subprocess.Popen(
            [*command, "-g", self._globals()],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited {self._process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/nginx-health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx not ready in {timeout}s:\n{self.log()}")

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
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets are cut
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def upstream_ports(lines: list[str]) -> list[int]:
    """The gateway port each logged request finally went to (the last address tried)."""
    ports = []
    for line in lines:
        match = re.search(r" upstream=(.*?) upstream_status=", line)
        if match and match[1] != "-":
            ports.append(int(match[1].split(",")[-1].strip().rsplit(":", 1)[1]))
    return ports
