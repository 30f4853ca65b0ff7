"""The system under test, as the README's "Two gateways behind nginx" section runs it.

`python -m shared.devstack` (what `make run` runs: embedded PostgreSQL and Redis, notifications_svc,
agent_svc and a gateway, all supervised), a second gateway and a second agent_svc (chat workers
that take over a killed worker's answers) on the same Redis and PostgreSQL, and Debian's nginx
with `deploy/nginx.conf` in front of both (rendered by `deploy/local_nginx.py`, as an operator
does). Everything listens on loopback ports chosen at start, data and logs live in a throw-away
folder. `close()` stops everything (SIGTERM, then SIGKILL) and is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench import local_nginx
from shared.infra import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET_KEY = "chaos-secret-key-" + "c" * 32
INTERNAL_TOKEN = "chaos-internal-token-" + "i" * 32
SERVICES = ("notifications_svc", "agent_svc", "gateway")


class StartError(RuntimeError):
    """A part did not start; the message names it and carries its log's tail."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _children(pid: int) -> list[tuple[int, str, str]]:
    """(pid, process name, command line) of `pid`'s direct children, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # stat: "pid (name) state ppid ..."; the name may hold spaces, so split after its ")".
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append((int(entry.name), name, cmdline))
    return found


class System:
    """`extra_env` is added to every part's environment (agent workers, reclaim time, ...)."""

    def __init__(self, nginx_binary: str, extra_env: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chaos-"))
        self.ports = {name: free_port() for name in (*SERVICES, "gateway2", "agent2", "nginx")}
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "DATA_DIR": str(self.root / "data"),
            "SECRET_KEY": SECRET_KEY,
            "INTERNAL_TOKEN": INTERNAL_TOKEN,
            "LOG_LEVEL": "WARNING",
            "WS_CONNECTION_TIMEOUT": "3600",  # clients only listen; a run must not idle them out
            "GATEWAY_PORT": str(self.ports["gateway"]),
            "NOTIFICATIONS_PORT": str(self.ports["notifications_svc"]),
            "AGENT_PORT": str(self.ports["agent_svc"]),
            "PYTHONUNBUFFERED": "1",
        } | (extra_env or {})
        self._nginx_binary = nginx_binary
        self.devstack: subprocess.Popen[bytes] | None = None
        self.gateway2: subprocess.Popen[bytes] | None = None
        self.agent2: subprocess.Popen[bytes] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> System:
        try:
            self.start()
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

    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['nginx']}"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.root / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _wait(self, name: str, process: subprocess.Popen[bytes], urls: list[str]) -> None:
        deadline = time.monotonic() + 120
        while not all(_answers(url) for url in urls):
            if process.poll() is not None or time.monotonic() > deadline:
                log = _tail(self.root / f"{name}.log")
                raise StartError(f"{name} did not start (status {process.poll()}):\n{log}")
            time.sleep(0.2)

    def start(self) -> None:
        self.devstack = self._spawn("devstack", [sys.executable, "-m", "shared.devstack"], self.env)
        self._wait("devstack", self.devstack, [self.url(s) + "/readyz" for s in SERVICES])
        self.start_gateway2()
        self.start_agent2()
        nginx = local_nginx.module()
        workdir = self.root / "nginx"
        workdir.mkdir()
        nginx.prepare(
            workdir,
            port=self.ports["nginx"],
            upstreams=[self.ports["gateway"], self.ports["gateway2"]],
        )
        self.nginx = self._spawn("nginx", nginx.command(self._nginx_binary, workdir), self.env)
        self._wait("nginx", self.nginx, [self.nginx_url + "/nginx-health"])

    def start_gateway2(self) -> None:
        """The second gateway, as the README starts it by hand: `make run`'s Redis and
        secrets, its own port. Nothing supervises it."""
        state = json.loads((self.root / "data" / "infra.json").read_text())
        env = self.env | {
            "REDIS_URL": state["redis_url"],
            "GATEWAY_PORT": str(self.ports["gateway2"]),
        }
        self.gateway2 = self._spawn("gateway2", [sys.executable, "-m", "gateway"], env)
        self._wait("gateway2", self.gateway2, [self.url("gateway2") + "/readyz"])

    def start_agent2(self) -> None:
        """A second agent_svc on `make run`'s Redis and PostgreSQL, its own port, unsupervised:
        its workers share the consumer group, so either process takes over the other's answers."""
        state = json.loads((self.root / "data" / "infra.json").read_text())
        env = self.env | {
            "REDIS_URL": state["redis_url"],
            "DATABASE_URL": state["database_url"],
            "AGENT_PORT": str(self.ports["agent2"]),
        }
        self.agent2 = self._spawn("agent2", [sys.executable, "-m", "agent_svc"], env)
        self._wait("agent2", self.agent2, [self.url("agent2") + "/readyz"])

    def pid_of(self, name: str) -> int:
        """The pid of a part: `gateway2`, `agent2`, or a child of the devstack
        (`notifications_svc`, `agent_svc`, `gateway`, `redis`, `postgres`). Raises `LookupError`
        if it is not running."""
        if name in ("gateway2", "agent2"):
            process: subprocess.Popen[bytes] | None = getattr(self, name)
            if process is None or process.poll() is not None:
                raise LookupError(f"{name} is not running")
            return process.pid
        assert self.devstack is not None
        for pid, process_name, cmdline in _children(self.devstack.pid):
            # The servers rewrite their command lines; their process names stay.
            if name in SERVICES and cmdline.endswith(f"-m {name}"):
                return pid
            if (name, process_name) in (("redis", "redis-server"), ("postgres", "postgres")):
                return pid
        raise LookupError(f"{name} is not running")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each running part and its descendants used since they
        started (a part restarted during the run counts since its restart)."""
        tick = os.sysconf("SC_CLK_TCK")

        def tree(pid: int) -> float:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return 0.0
            own = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            return own + sum(tree(child) for child, _, _ in _children(pid))

        found: dict[str, float] = {}
        for part in (*SERVICES, "gateway2", "agent2", "redis", "postgres"):
            try:
                found[part] = tree(self.pid_of(part))
            except LookupError:
                continue
        if self.nginx is not None:
            found["nginx"] = tree(self.nginx.pid)
        return found

    def ready(self) -> bool:
        """Every service of the devstack, nginx, the second gateway and the second agent —
        unless one of these is down (killed, and started again only by hand) — answer their
        probes."""
        parts = list(SERVICES)
        for part in ("gateway2", "agent2"):
            process: subprocess.Popen[bytes] | None = getattr(self, part)
            if process is not None and process.poll() is None:
                parts.append(part)
        urls = [self.url(part) + "/readyz" for part in parts]
        return all(_answers(url) for url in [*urls, self.nginx_url + "/nginx-health"])

    def log(self, name: str, lines: int = 40) -> str:
        return _tail(self.root / f"{name}.log", lines)

    def keep_logs(self, folder: Path) -> None:
        """Copy every part's log into `folder` (before `close` removes the working folder)."""
        folder.mkdir(parents=True, exist_ok=True)
        for log in self.root.glob("*.log"):
            shutil.copy(log, folder / log.name)

    def close(self) -> None:
        for attribute in ("nginx", "gateway2", "agent2", "devstack"):
            process: subprocess.Popen[bytes] | None = getattr(self, attribute)
            setattr(self, attribute, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
