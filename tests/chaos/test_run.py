"""`make chaos`, small: two faults of issue 14's table against the real set-up (devstack, two
gateways, nginx), under load, with nothing lost, doubled or reordered and no 500."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chaos import report
from chaos.run import Config, header, run
from chaos.system import System


def test_gateway_kill_and_postgres_restart_lose_nothing(nginx_path: str, tmp_path: Path) -> None:
    """kill -9 of `make run`'s gateway (its clients move through nginx and come back) and a
    PostgreSQL fast restart (the producer meets 503s, retries with its keys): every committed
    notification reaches every client of its user once, in order; the producer sees no 500."""
    config = Config(clients=8, rate=20, pause=2, lead=1, only=("kill-gateway", "restart-postgres"))
    with System(nginx_path) as system:
        rows = asyncio.run(run(system, config))
    assert [row.fault for row in rows] == [
        "kill -9 of the gateway `make run` started",
        "PostgreSQL fast restart (by `make run`)",
    ]
    for row in rows:
        assert (row.lost, row.duplicated, row.reordered) == (0, 0, 0), row
        assert set(row.status_5xx) <= {"503"}, row
        assert row.committed > 0 and row.caught_up_after is not None, row
    killed = rows[0]
    assert killed.dropped > 0 and killed.back_after is not None, killed
    (tmp_path / "CHAOS.md").write_text(report.markdown(rows, header(config)))
    assert "| 0 | 0 | 0 |" in (tmp_path / "CHAOS.md").read_text()
