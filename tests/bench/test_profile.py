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
    assert profile["torn_lines"] == 1  # the garbage line
    rows = {row["function"]: row for row in profile["functions"]}
    assert rows["run (asyncio/runners.py)"] == {
        "function": "run (asyncio/runners.py)",
        "self_pct": 60.0,
        "total_pct": 100.0,
    }
    assert rows["offer (gateway/connection.py)"]["self_pct"] == 30.0
    assert rows["_message (gateway/fanout.py)"]["self_pct"] == 10.0
    assert rows["_message (gateway/fanout.py)"]["total_pct"] == 40.0


def test_a_torn_sample_is_left_out_and_counted(tmp_path: Path) -> None:
    """A sample read while the target changed its frames (py-spy's `--nonblocking`) may name a
    frame with a module docstring, whose lines break the record over several lines, one ending
    in a number: none of it is counted as samples, its lines are counted as torn. A sample
    without a Python frame is neither."""
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "run (asyncio/runners.py:190);write_frames (gateway/wsprotocol.py:647) 7\n"
        "run (asyncio/runners.py:190);The event loop's lag, measured where it happens.\n"
        "\n"
        "`monitorEventLoopDelay` measures the same way; the timer costs about 200\n"
        " (__doc__:-16446463);data_received (gateway/wsprotocol.py:583) 1\n"
        " 144\n"
    )
    profile = hot_functions(stacks, top=5)
    assert profile["samples"] == 7
    assert profile["torn_lines"] == 3
    assert profile["functions"][0] == {
        "function": "write_frames (gateway/wsprotocol.py)",
        "self_pct": 100.0,
        "total_pct": 100.0,
    }


def test_missing_profile_is_empty(tmp_path: Path) -> None:
    """No file (py-spy absent or failed): zero samples, no rows."""
    assert hot_functions(tmp_path / "absent.txt") == {
        "samples": 0,
        "torn_lines": 0,
        "functions": [],
    }
