"""Embedded infrastructure: real servers on loopback, data kept across restarts."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from pathlib import Path

import asyncpg
import pytest
import redis as redis_sync

from shared.infra import EmbeddedPostgres, EmbeddedRedis, local_passwords, port_open


def test_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    """Stopping and starting the embedded Redis on the same port keeps written keys (AOF)."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        client = redis_sync.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
        server.stop()
        assert not port_open(server.port)
        server.start()
        client = redis_sync.Redis.from_url(server.url)
        assert client.get("k") == b"v"
        client.close()
    finally:
        server.stop()
        server.stop()  # idempotent


def test_postgres_keeps_data_across_restart() -> None:
    """A second start on the same folder sees the first run's rows."""
    # Outside pytest's tmp root, which other pytest sessions may reset to 0700 (see infra).
    root = Path(tempfile.mkdtemp(prefix="realtime-test-pg-"))
    first = EmbeddedPostgres(root / "pg")

    async def write() -> None:
        conn = await asyncpg.connect(first.url)
        await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        await conn.close()

    first.start()
    try:
        asyncio.run(write())
    finally:
        first.stop()
    second = EmbeddedPostgres(root / "pg")
    second.start()

    async def read() -> int:
        conn = await asyncpg.connect(second.url)
        try:
            return int(await conn.fetchval("SELECT v FROM t"))
        finally:
            await conn.close()

    try:
        assert asyncio.run(read()) == 42
    finally:
        second.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not port_open(second.port)


def test_redis_data_and_log_are_private(tmp_path: Path) -> None:
    """The embedded Redis's folder is 0700 and its AOF files and log 0600, even when started
    under the usual umask (022), which would make the files it creates world-readable."""
    old_umask = os.umask(0o022)
    server = EmbeddedRedis(tmp_path / "data" / "redis")
    try:
        server.start()
        client = redis_sync.Redis.from_url(server.url)
        client.set("k", "v")
        client.bgrewriteaof()  # the rewrite creates new files too
        client.close()
    finally:
        server.stop()
        os.umask(old_umask)
    data = tmp_path / "data" / "redis"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name.startswith("appendonly") for p in files), files
    for path in [*files, tmp_path / "data" / "redis.log"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_redis_password_is_required_and_kept_off_the_command_line(tmp_path: Path) -> None:
    """With a password, the embedded Redis refuses unauthenticated commands, accepts its URL's
    password, and the password is in a 0600 config file, not in the process's command line."""
    password = "redis-pw-" + "q" * 24
    server = EmbeddedRedis(tmp_path / "redis", password=password)
    server.start()
    try:
        anonymous = redis_sync.Redis(host="127.0.0.1", port=server.port)
        with pytest.raises(redis_sync.exceptions.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        client = redis_sync.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert stat.S_IMODE((tmp_path / "redis" / "auth.conf").stat().st_mode) == 0o600
    finally:
        server.stop()


def test_postgres_password_is_required() -> None:
    """A cluster created with a password answers only clients that give it (SCRAM)."""
    root = Path(tempfile.mkdtemp(prefix="realtime-test-pg-"))
    password = "pg-pw-" + "r" * 24
    server = EmbeddedPostgres(root / "pg", durable=False, password=password)

    async def probe() -> None:
        anonymous = server.url.replace(f":{password}@", "@")
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.ClientConfigurationError)):
            await asyncpg.connect(anonymous)
        conn = await asyncpg.connect(server.url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()

    try:
        server.start()
        asyncio.run(probe())
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_local_passwords_are_random_kept_and_private(tmp_path: Path) -> None:
    """The embedded servers' passwords are made once per data folder (0600) and reused."""
    data = tmp_path / "data"
    first = local_passwords(data)
    assert local_passwords(data) == first and first["postgres"] != first["redis"]
    assert stat.S_IMODE((data / "infra-passwords.json").stat().st_mode) == 0o600
    assert local_passwords(tmp_path / "other") != first
