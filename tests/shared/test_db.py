"""shared.db's outage classification and its rewrite of asyncpg's pool-floor warning (pure)."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from shared import db


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        ),
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    ],
)
def test_outages_are_unavailable(exc: Exception) -> None:
    """Refused, reset, restarting, overloaded or half-closed connections mean "retry later"."""
    assert db.is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.DataError("invalid input"),
        ValueError("a bug"),
    ],
)
def test_bugs_and_refused_data_are_not_unavailable(exc: Exception) -> None:
    """Errors a retry cannot fix stay errors (422 or 500 elsewhere), not 503."""
    assert not db.is_unavailable(exc)


def test_pool_floor_warning_becomes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """asyncpg's "Failed to restore the pool connection floor" warning keeps its level but loses
    the traceback and names the outage and its cause instead."""
    db.quiet_pool_floor_warning()
    db.quiet_pool_floor_warning()  # idempotent: one filter
    logger = logging.getLogger("asyncpg.pool")
    assert sum(isinstance(f, db.PoolFloorFilter) for f in logger.filters) == 1
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError:
        with caplog.at_level(logging.WARNING, logger="asyncpg.pool"):
            logger.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.getMessage().startswith("postgres unreachable")
    assert "ConnectionRefusedError" in record.__dict__["error"]
