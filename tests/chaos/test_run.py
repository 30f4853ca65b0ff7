"""`make chaos`, small: three faults against the real set-up (devstack, two gateways, two agents,
nginx), under load, with nothing lost, doubled or reordered, no 500, and every answer complete."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chaos import plot, report
from chaos.run import Config, environment, header, run
from chaos.system import System


def test_gateway_kill_postgres_restart_and_worker_kill_lose_nothing(
    nginx_path: str, tmp_path: Path
) -> None:
    """kill -9 of `make run`'s gateway (its clients and answers move through nginx and
    resume), a PostgreSQL fast restart (the producer meets 503s, retries with its keys), and
    kill -9 of an agent process mid-answer (another worker takes the answers over): every
    committed notification (sent in batches, retried with their dedupe keys) reaches every
    client of its user once, in order; every answer completes, its tokens exactly the
    persisted reply; the producer sees no 500; each step reports its offered and committed
    rates."""
    config = Config(
        clients=8,
        rate=20,
        answers=4,
        agent_workers=3,
        reclaim_idle=2,
        pause=2,
        lead=1,
        only=("kill-gateway", "restart-postgres", "kill-agent"),
    )
    with System(nginx_path, environment(config)) as system:
        result = asyncio.run(run(system, config))
    rows = result.rows
    assert [row.fault for row in rows] == [
        "kill -9 of the gateway `make run` started",
        "PostgreSQL fast restart (by `make run`)",
        "kill -9 of an agent worker process mid-answer",
    ]
    for row in rows:
        assert (row.lost, row.duplicated, row.reordered) == (0, 0, 0), row
        assert set(row.status_5xx) <= {"503"}, row
        assert row.committed > 0 and row.caught_up_after is not None, row
        assert row.offered_rate > 0 and row.committed_rate > 0, row
        assert row.answers > 0 and row.completed == row.answers, row
        assert row.mismatched == 0 and row.answers_done_after is not None, row
    killed = rows[0]
    assert killed.dropped > 0 and killed.back_after is not None, killed
    assert result.reclaimed > 0  # the killed process's answers were taken over
    assert {"load generator", "gateway", "postgres", "redis"} <= set(result.cpu)
    assert plot.draw(rows, result.steps, result.arrivals, result.started, tmp_path / "c.png")
    text = report.markdown(rows, header(config, result, "c.png"))
    assert "| 0 | 0 | 0 |" in text and (tmp_path / "c.png").stat().st_size > 0
