"""PostgreSQL access: one asyncpg pool per process, created from `Settings`, and the one
answer to "does this error mean the database is unavailable?".

Connections carry JSON/JSONB codecs so `jsonb` columns read and write Python objects, and a
statement timeout so a stuck query fails instead of holding a pool slot forever.

`UNAVAILABLE` lists the errors that say "PostgreSQL is unreachable, restarting, shedding load or
too slow right now": the request may succeed later, so services answer 503 (see
`exception_handlers`) and background loops retry them without counting them against the work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import Unavailable
from shared.http import error_response
from shared.settings import Settings

log = logging.getLogger(__name__)

UNAVAILABLE: tuple[type[Exception], ...] = (
    # Socket errors, refused connections and timeouts (TimeoutError is an OSError).
    OSError,
    # SQLSTATE class 08: the connection failed or was lost.
    asyncpg.PostgresConnectionError,
    # Class 57: the server is shutting down or starting (57P01..57P03: AdminShutdownError,
    # CrashShutdownError, CannotConnectNowError) or cancelled the statement (statement_timeout).
    asyncpg.exceptions.OperatorInterventionError,
    # Class 53: too many connections, out of memory or disk.
    asyncpg.exceptions.InsufficientResourcesError,
    # The client side of a lost connection: ConnectionDoesNotExistError ("connection was closed
    # in the middle of operation"), "connection is closed", a pool closed under a request.
    asyncpg.InterfaceError,
    # asyncpg's protocol state machine refusing a step on a connection the server dropped
    # mid-operation, e.g. "cannot switch to state 15; another operation (2) is in progress"
    # when the pool's reset query on release follows the FATAL "terminating connection due to
    # administrator command" of a restart. The pool then discards that connection.
    asyncpg.exceptions.InternalClientError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the database is unavailable for now (retry later), not a bug."""
    return isinstance(exc, UNAVAILABLE)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # One line without a traceback: an outage is an expected event, not a bug to debug.
    log.warning("database unavailable", extra={"path": request.url.path, "error": repr(exc)})
    return error_response(Unavailable("database unavailable, retry later"))


def exception_handlers() -> Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette exception handlers answering 503 `SERVICE_UNAVAILABLE` for every error in
    `UNAVAILABLE` (Starlette picks a handler by the exception's class, most specific first)."""
    return dict.fromkeys(UNAVAILABLE, _database_unavailable)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A connected pool; raises `OSError`/`asyncpg.PostgresError` when the server is unreachable."""
    quiet_pool_floor_warning()
    return await asyncpg.create_pool(
        settings.asyncpg_dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        server_settings={"statement_timeout": "30000", "application_name": "realtime-backend"},
    )


class PoolFloorFilter(logging.Filter):
    """Turns asyncpg's "Failed to restore the pool connection floor; retrying" warning, with its
    traceback, into one line naming the cause.

    asyncpg (0.30+) keeps `min_size` connections open: when one closes, a background task
    reconnects it, and while PostgreSQL is down or restarting every attempt fails and logs that
    warning with a full traceback, retrying after 1 s, doubling to 60 s. Nothing is lost and no
    request waits on it: requests connect on their own and answer 503 until the server is back.
    The message stays a warning (the database is unreachable) but reads as the outage it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to restore the pool connection floor"):
            error = record.exc_info[1] if record.exc_info else None
            record.msg = (
                "postgres unreachable: the pool keeps reconnecting its idle connections "
                "in the background"
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.__dict__["error"] = repr(error)
        return True


def quiet_pool_floor_warning() -> None:
    """Install `PoolFloorFilter` on asyncpg's pool logger (idempotent)."""
    logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, PoolFloorFilter) for f in logger.filters):
        logger.addFilter(PoolFloorFilter())


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> None:
    """Raise unless the database answers a trivial query within `timeout` seconds."""
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout)
