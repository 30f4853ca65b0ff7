"""`python -m bench` end to end against the real gateway at toy scale: the stack starts, the
gateway's fan-out delivers every frame, and results.json and report.md are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shared.settings import Settings


def test_bench_runs_against_the_gateway(settings: Settings, tmp_path: Path) -> None:
    """A one-step run reports delivered == sent for the gateway and writes the report."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "BENCH_SCALE": "small",
        "BENCH_SERVERS": "gateway",
        "BENCH_SCENARIOS": "websocket",
        "BENCH_IDLE_LEVELS": "20",
        "BENCH_RATE_STEPS": "1",
        "BENCH_STEP_SECONDS": "0.3",
        "BENCH_BROADCASTS": "1",
        "BENCH_HELD_SECONDS": "0.5",
        "BENCH_DISCONNECT_WINDOW": "0.5",
        "BENCH_OUT": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    gateway = results["websocket"]["gateway"]
    assert gateway["idle"][0]["open"] == 20
    step = gateway["fanout"]["steps"][0]
    assert step["sent"] > 0
    assert step["delivered"] == step["sent"]
    assert gateway["broadcast"]["all_received"]
    # The gateway's own loop lag is scraped for every window the stall target names.
    assert gateway["idle"][0]["gc_connecting"]["lag_ticks"] > 0
    assert "lag_over_budget" in step["gc"] and "lag_longest" in gateway["disconnect"]["gc"]
    # Each core's steal over the run, as a share of its wall time.
    assert set(results["steal_share"]) == {str(core) for core in range(os.cpu_count() or 1)}
    assert all(0.0 <= share < 1.0 for share in results["steal_share"].values())
    assert all(seconds > 0 for seconds in results["reference_loop_seconds"])
    report = (tmp_path / "report.md").read_text()
    assert "## Targets" in report and "CPU steal over the run" in report
    assert "Machine speed: a fixed pure-Python loop" in report
