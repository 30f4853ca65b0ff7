"""Sampling profiles of a server while a scenario runs (py-spy, from the `bench` extra).

`BENCH_PROFILE=1 make bench` wraps each phase of the gateway's scenarios in a `Profiler`, which
runs `py-spy record --nonblocking` against the process (the target is never paused, so the
numbers of a profiled run stay close to an unprofiled one, but publish unprofiled numbers) and
leaves collapsed stacks in `<out>/profiles/`. `hot_functions` reads them back into the table the
report prints: where the CPU went, by own time and by inclusive time. Idle samples (the event
loop waiting in epoll) are not collected, so percentages are of busy time.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

ATTACH_ATTEMPTS = 5
ATTACH_GRACE = 1.0  # seconds: a py-spy that could not attach has exited by then

# One frame of a collapsed stack: `name (path:line)`. A sample read while the target changed
# its frames (`--nonblocking`) can name a frame with whatever string it found there, a module
# docstring's lines included: one such record spans several lines, some ending in a number.
_FRAME = re.compile(r"\S.* \([^()]*:-?\d+\)")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH, if installed."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


class Profiler:
    """Samples `pid` from `__enter__` to `__exit__` into `path` (collapsed stacks). Does nothing
    (and `path` is not written) when py-spy is not installed."""

    def __init__(self, pid: int, path: Path, rate: int = 250) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        executable = py_spy()
        if executable is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # py-spy sometimes fails to read the interpreter version from the target's memory
        # ("Failed to find python version"), depending on the layout: retry a few times.
        for _ in range(ATTACH_ATTEMPTS):
            with open(self.path.with_suffix(".log"), "wb") as log:
                process = subprocess.Popen(
                    [
                        executable, "record", "--pid", str(self.pid), "--rate", str(self.rate),
                        "--format", "raw", "--output", str(self.path), "--nonblocking",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            try:
                process.wait(ATTACH_GRACE)
            except subprocess.TimeoutExpired:
                self._process = process  # still sampling: attached
                return self
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _function(frame: str) -> str:
    """`name (path/to/module.py:123)` -> `name (module.py)`: lines merged per function."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})" if where else name


def hot_functions(path: Path, top: int = 15) -> dict[str, Any]:
    """The `top` functions by own (self) samples, with their inclusive share, from collapsed
    stacks. Returns `{"samples": N, "torn_lines": T, "functions": [{function, self_pct,
    total_pct}]}`: the lines of a record with a frame that is not `name (path:line)` (a torn
    read) are left out of N and counted in T."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = torn_lines = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"samples": 0, "torn_lines": 0, "functions": []}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            torn_lines += bool(line.strip())
            continue
        raw = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not raw:
            continue  # no Python frame to count the sample in
        if not all(_FRAME.fullmatch(f) for f in raw):
            torn_lines += 1
            continue
        frames = [_function(f) for f in raw]
        count = int(count_text)
        samples += count
        own[frames[-1]] += count
        for function in set(frames):
            inclusive[function] += count
    return {
        "samples": samples,
        "torn_lines": torn_lines,
        "functions": [
            {
                "function": function,
                "self_pct": round(100 * n / samples, 1),
                "total_pct": round(100 * inclusive[function] / samples, 1),
            }
            for function, n in own.most_common(top)
        ],
    }
