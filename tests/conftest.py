"""Test fixtures: real embedded PostgreSQL and Redis, started once per test session.

Integration tests get URLs and a `Settings` for them, a factory for real service processes on
loopback ports, and helpers to mint tokens. Each test uses fresh random user ids, so tests share
the databases without seeing each other's data. Tests that stop Redis or PostgreSQL use
`private_redis` / `private_postgres`, servers of their own, so an outage never leaks into other
tests; `private_database` gives a notifications_svc an outbox of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared import migrate
from shared.auth import mint_token
from shared.infra import EmbeddedPostgres, EmbeddedRedis
from shared.local_cluster import LocalRedisCluster
from shared.settings import Settings
from tests.deploy.nginx import Nginx, StartNginx, nginx_binary
from tests.support import contract
from tests.support.processes import ServiceProcess
from tests.support.push_service import PushService
from tests.support.redis_cluster import started_or_skip

TEST_SECRET_KEY = "test-secret-key-" + "x" * 32
TEST_INTERNAL_TOKEN = "test-internal-token-" + "y" * 32

PORT_VARS = {
    "gateway": "GATEWAY_PORT",
    "notifications_svc": "NOTIFICATIONS_PORT",
    "agent_svc": "AGENT_PORT",
}


class Infra:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = EmbeddedPostgres(root / "postgres", durable=False)
        self.redis = EmbeddedRedis(root / "redis")


@pytest.fixture(scope="session")
def contract_checker() -> Iterator[contract.Checker]:
    """Every HTTP response and WebSocket frame the suite receives from our services is checked
    against the OpenAPI and AsyncAPI documents (tests/support/contract.py)."""
    checker = contract.Checker()
    uninstall = contract.install(checker)
    try:
        yield checker
    finally:
        uninstall()


@pytest.fixture(autouse=True)
def _contract_checked(contract_checker: contract.Checker) -> Iterator[None]:
    """Fails the test that received anything off-contract, even where a broad `except` in the
    test swallowed the `ContractViolation` raised at the call."""
    before = len(contract_checker.violations)
    yield
    new = contract_checker.violations[before:]
    if new:
        pytest.fail("off-contract answers:\n" + "\n".join(new), pytrace=False)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Embedded PostgreSQL and Redis for the whole session, migrations applied.

    Their data lives outside pytest's temporary root on purpose: run as root, PostgreSQL runs as
    an unprivileged user that needs to traverse the folders above its data, and every pytest
    session that starts (another engineer's, CI's) resets `/tmp/pytest-of-<user>` to mode 0700,
    which would pull the data folder from under a running server.
    """
    root = Path(tempfile.mkdtemp(prefix="realtime-test-infra-"))
    stack = Infra(root)
    try:
        stack.postgres.start()
        stack.redis.start()
        yield stack
    finally:
        stack.redis.stop()
        stack.postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def base_env(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every service process of the session starts with."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": infra.postgres.url,
        "REDIS_URL": infra.redis.url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "INTERNAL_TOKEN": TEST_INTERNAL_TOKEN,
        "DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "LOG_LEVEL": "INFO",
        "CORS_ORIGINS": "http://localhost:5173",
    }


@pytest.fixture(scope="session")
def settings(base_env: dict[str, str]) -> Settings:
    resolved = Settings.from_env(base_env)
    asyncio.run(migrate.apply_with_settings(resolved))
    return resolved


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


SpawnService = Callable[..., ServiceProcess]


@pytest.fixture(scope="session")
def spawn_service(
    base_env: dict[str, str], settings: Settings, log_dir: Path
) -> Iterator[SpawnService]:
    """Factory: `spawn_service("gateway", SOME_VAR="x")` starts a real process and waits until
    it is ready; every process it started is stopped at the end of the session."""
    started: list[ServiceProcess] = []

    def spawn(module: str, *, wait_path: str = "/readyz", **env: str) -> ServiceProcess:
        process = ServiceProcess(module, base_env | env, log_dir, PORT_VARS[module])
        started.append(process)
        return process.start(wait_path=wait_path)

    yield spawn
    ServiceProcess.stop_all(started)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of this test's own, free to be stopped and restarted."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        # Its data dies with the test, so there is nothing to shut down gracefully: redis-server
        # acts on SIGTERM only at its next cron tick (up to 100 ms, in each of ~70 tests), on
        # SIGKILL at once (also when a test left it paused with SIGSTOP).
        if server.running and server.pid is not None:
            os.kill(server.pid, signal.SIGKILL)
        server.stop()


@pytest.fixture
def private_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, free to be stopped and restarted (its data lives
    outside pytest's tmp root for the reason given in `infra`)."""
    root = Path(tempfile.mkdtemp(prefix="realtime-test-pg-"))
    server = EmbeddedPostgres(root / "postgres", durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def private_database(settings: Settings) -> AsyncIterator[str]:
    """The URL of a fresh, empty database of this test's own on the session's PostgreSQL.

    For a notifications_svc that must not share its outbox with the session's instances (their
    relays would publish its rows to the session's Redis, not to the test's private one).
    """
    name = f"private_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield settings.asyncpg_dsn.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def user_id() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def token_for(settings: Settings) -> Callable[..., str]:
    """Mint a valid HS256 token for a user id (extra claims and ttl may be given)."""

    def mint(user: uuid.UUID | str, ttl: float = 3600, **claims: object) -> str:
        return mint_token(settings, user, ttl, **claims)

    return mint


@pytest.fixture(scope="session")
def push_service(settings: Settings) -> Iterator[PushService]:
    """The Web Push stand-in, expecting the session's VAPID public key (every service of the
    session shares `DATA_DIR`, hence the generated development key pair)."""
    service = PushService(settings.vapid_public_key).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real 3-primary Redis 7 cluster on loopback ports, one for the whole run (skipped, with
    the reason, only where Debian's redis-server is missing outside CI). Tests share it as they
    share the PostgreSQL and Redis of `infra`: keys of their own (random ids), and a test that
    moves a slot or stops a node puts it back before it ends."""
    nodes = started_or_skip(tmp_path_factory.mktemp("cluster"))
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="session")
def nginx_path() -> str:
    found: str | None = nginx_binary()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run should have installed Debian's nginx")
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does it in CI)")
    return found


@pytest.fixture
def start_nginx(nginx_path: str, tmp_path: Path) -> Iterator[StartNginx]:
    """Factory: `start_nginx([port, ...])` runs deploy/nginx.conf in front of those gateway
    ports; every nginx it started is stopped when the test ends."""
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        workdir = tmp_path / f"nginx-{len(started)}"
        workdir.mkdir()
        proxy = Nginx(workdir, upstreams, nginx_path)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How much of the suite's traffic the contract checks saw."""
    checked = contract.LAST_COUNTS
    if any(checked.values()):
        terminalreporter.write_line(
            "contract checks: {responses} HTTP responses, {events} SSE events, "
            "{frames} WebSocket frames validated".format(**checked)
        )
