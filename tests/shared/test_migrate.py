"""Migrations: applied once, recorded, safe under concurrent start-up, never edited."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from shared.migrate import MigrationError, apply, discover
from shared.settings import Settings


def _component(tmp_path: Path, files: dict[str, str]) -> tuple[tuple[str, Path], ...]:
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return ((f"test_{uuid.uuid4().hex[:8]}", folder),)


async def test_applies_in_order_once(settings: Settings, tmp_path: Path) -> None:
    """Pending files run in version order; a second run applies nothing."""
    schema = f"m_{uuid.uuid4().hex[:8]}"
    components = _component(
        tmp_path,
        {
            "0002_insert.sql": f"INSERT INTO {schema}.t VALUES (1);",
            "0001_create.sql": f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (v int);",
        },
    )
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        assert await apply(conn, components) == [
            f"{components[0][0]}/0001_create.sql",
            f"{components[0][0]}/0002_insert.sql",
        ]
        assert await apply(conn, components) == []
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.t") == 1
    finally:
        await conn.close()


async def test_concurrent_starts_apply_each_file_once(settings: Settings, tmp_path: Path) -> None:
    """Five processes' worth of concurrent apply() calls run a migration exactly once."""
    schema = f"m_{uuid.uuid4().hex[:8]}"
    components = _component(
        tmp_path,
        {
            "0001_create.sql": f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (v int);"
            f"INSERT INTO {schema}.t VALUES (1); SELECT pg_sleep(0.2);",
        },
    )
    conns = [await asyncpg.connect(settings.asyncpg_dsn) for _ in range(5)]
    try:
        results = await asyncio.gather(*(apply(c, components) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, 0, 1]
        assert await conns[0].fetchval(f"SELECT count(*) FROM {schema}.t") == 1
    finally:
        for conn in conns:
            await conn.close()


async def test_edited_migration_stops_start_up(settings: Settings, tmp_path: Path) -> None:
    """A migration whose text changed after it was applied raises MigrationError."""
    schema = f"m_{uuid.uuid4().hex[:8]}"
    components = _component(tmp_path, {"0001_create.sql": f"CREATE SCHEMA {schema};"})
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await apply(conn, components)
        (components[0][1] / "0001_create.sql").write_text(f"CREATE SCHEMA {schema}_x;")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply(conn, components)
    finally:
        await conn.close()


async def test_failed_migration_is_not_recorded(settings: Settings, tmp_path: Path) -> None:
    """A failing file rolls back entirely and is retried on the next start."""
    components = _component(tmp_path, {"0001_bad.sql": "CREATE TABLE nope (; "})
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await apply(conn, components)
        recorded = await conn.fetchval(
            "SELECT count(*) FROM public.schema_migrations WHERE component = $1", components[0][0]
        )
        assert recorded == 0
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    """Only NNNN_lower_snake.sql names are accepted."""
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="expected a name like"):
        discover("c", tmp_path)


async def test_project_schemas_exist(settings: Settings) -> None:
    """The project's migrations created the users and chat tables."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        tables = {
            r["t"]
            for r in await conn.fetch(
                "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables"
            )
        }
    finally:
        await conn.close()
    assert {"users.users", "chat.sessions", "chat.messages"} <= tables
