"""Reading py-spy's collapsed stacks into the report's hot-function table."""

from __future__ import annotations

from pathlib import Path

from bench.profile import hot_functions


def test_own_and_inclusive_shares(tmp_path: Path) -> None:
    """Own time goes to the leaf, inclusive time to every function on the stack, once each."""
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "run (asyncio/runners.py:190);_message (gateway/fanout.py:212);"
        "offer (gateway/connection.py:120) 30\n"
        "run (asyncio/runners.py:190);_message (gateway/fanout.py:215) 10\n"
        "run (asyncio/runners.py:190);run (asyncio/runners.py:118) 60\n"
        "garbage line\n"
    )
    profile = hot_functions(stacks, top=5)
    assert profile["samples"] == 100
    rows = {row["function"]: row for row in profile["functions"]}
    assert rows["run (asyncio/runners.py)"] == {
        "function": "run (asyncio/runners.py)",
        "self_pct": 60.0,
        "total_pct": 100.0,
    }
    assert rows["offer (gateway/connection.py)"]["self_pct"] == 30.0
    assert rows["_message (gateway/fanout.py)"]["self_pct"] == 10.0
    assert rows["_message (gateway/fanout.py)"]["total_pct"] == 40.0


def test_missing_profile_is_empty(tmp_path: Path) -> None:
    """No file (py-spy absent or failed): zero samples, no rows."""
    assert hot_functions(tmp_path / "absent.txt") == {"samples": 0, "functions": []}
