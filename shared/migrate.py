"""Schema migrations: ordered SQL files per service, applied once, recorded, never edited.

Each service keeps `NNNN_name.sql` files in its own `migrations/` folder (it owns its schemas).
`apply()` takes a PostgreSQL advisory lock, so two services starting at once apply each file
exactly once; each file runs in its own transaction and is recorded with a checksum in
`public.schema_migrations`. A recorded file whose text changed stops start-up: a landed migration
is history, and a change belongs in a new file.

`python -m shared.migrate` (also `make migrate`) applies every service's migrations.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.settings import Settings, load_or_exit

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
# Order matters only between services that reference each other's schemas.
COMPONENTS: tuple[tuple[str, Path], ...] = (
    ("shared", _ROOT / "shared" / "migrations"),
    ("notifications_svc", _ROOT / "notifications_svc" / "migrations"),
    ("agent_svc", _ROOT / "agent_svc" / "migrations"),
)
_LOCK_KEY = 0x6D696772  # "migr": one lock for all components keeps ordering simple
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A migration folder or the recorded history is inconsistent."""


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(component: str, directory: Path) -> list[Migration]:
    """The component's migrations in version order; raises on a badly named or duplicate file."""
    migrations: list[Migration] = []
    if not directory.is_dir():
        return migrations
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: expected a name like 0001_create_things.sql")
        migrations.append(Migration(component, int(match[1]), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number")
    return migrations


_CREATE_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


async def apply(
    conn: asyncpg.Connection, components: tuple[tuple[str, Path], ...] = COMPONENTS
) -> list[str]:
    """Apply every pending migration of `components`; returns the names applied. Idempotent."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE_RECORD_TABLE)
        for component, directory in components:
            rows = await conn.fetch(
                "SELECT version, name, checksum FROM public.schema_migrations WHERE component = $1",
                component,
            )
            recorded = {row["version"]: row for row in rows}
            for migration in discover(component, directory):
                row = recorded.get(migration.version)
                if row is not None:
                    if row["checksum"] != migration.checksum:
                        raise MigrationError(
                            f"{component}/{migration.name} changed after it was applied "
                            "(add a new migration instead of editing a landed one)"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO public.schema_migrations (component, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        component,
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                log.info("migration applied", extra={"migration": f"{component}/{migration.name}"})
                applied.append(f"{component}/{migration.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def apply_with_settings(
    settings: Settings, components: tuple[tuple[str, Path], ...] = COMPONENTS
) -> list[str]:
    """Open a connection to `DATABASE_URL`, apply `components`, close it."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        return await apply(conn, components)
    finally:
        await conn.close()


def main() -> int:
    from shared import infra
    from shared import log as logsetup

    with infra.embedded_infra(load_or_exit()) as settings:
        logsetup.configure("migrate", settings.log_level, settings.secrets())
        applied = asyncio.run(apply_with_settings(settings))
    print(f"{len(applied)} migration(s) applied" + "".join(f"\n  {name}" for name in applied))
    return 0


if __name__ == "__main__":
    sys.exit(main())
