"""Embedded infrastructure: real servers on loopback, data kept across restarts."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import redis as redis_sync

from shared.infra import EmbeddedPostgres, EmbeddedRedis, port_open


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
