"""`python -m bench.stallwatch`: the gateway, with a watchdog thread that samples its event
loop's Python stack while the loop is late — where a stall is, not only that there was one.

Run it as the benchmark's gateway: `BENCH_GATEWAY_MODULE=bench.stallwatch python -m bench`. The
gateway's own loop-lag timer (`gateway.looplag`, every 5 ms) is the heartbeat, so nothing is added
to the loop. When the timer has not run for `LATE` seconds (its interval included), the watchdog
writes the main thread's stack every `EVERY` seconds, at most `SAMPLES` times per stall, as
WARNING lines of the gateway's own log (`bench.stallwatch`: `behind_ms`, `sample`, `stack`: a
frame a line, innermost last), which the benchmark keeps in `results/logs/gateway.log`; `summarize`
counts them by innermost frame. A sample is taken once the watchdog holds the GIL: inside a
long Python callback, or where the loop's C code (uvloop's system calls and callbacks) let go of
it, which shows as the loop's `run` being the innermost Python frame. py-spy (`BENCH_PROFILE=1`)
says where the CPU went on average; this says what held the loop the few times it was held.
"""

from __future__ import annotations

import collections
import json
import logging
import runpy
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from gateway.looplag import LoopLagMonitor

LATE = 0.015  # seconds since the timer's last run: 10 ms over its 5 ms interval
EVERY = 0.002  # seconds between looks (and samples) of the watchdog
SAMPLES = 8  # at most, per stall
STACK_DEPTH = 14  # innermost frames kept per sample

log = logging.getLogger("bench.stallwatch")


class Watchdog:
    """Samples the stack of thread `watched` while `beat()` has not been called for `late`
    seconds, from the first beat on (`clock`: monotonic; tests pass their own). `check()` is one
    look; `run()` looks every `every` seconds until `stop` is set."""

    def __init__(
        self,
        watched: int,
        late: float = LATE,
        samples: int = SAMPLES,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.watched, self.late, self.samples, self.clock = watched, late, samples, clock
        self.last: float | None = None  # None until the loop runs (start-up imports are not stalls)
        self._stall: float | None = None  # the beat the current stall started from
        self._taken = 0  # samples of the current stall

    def beat(self) -> None:
        self.last = self.clock()

    def check(self) -> None:
        last = self.last
        if last is None:
            return
        behind = self.clock() - last
        if behind <= self.late:
            return
        if last != self._stall:
            self._stall, self._taken = last, 0
        if self._taken >= self.samples:
            return
        frame = sys._current_frames().get(self.watched)
        if frame is None:
            return
        self._taken += 1
        stack = "\n".join(
            f"{entry.filename}:{entry.lineno} {entry.name}"
            for entry in traceback.extract_stack(frame, limit=STACK_DEPTH)
        )
        log.warning(
            "event loop late",
            extra={"behind_ms": round(behind * 1000, 1), "sample": self._taken, "stack": stack},
        )

    def run(self, stop: threading.Event, every: float = EVERY) -> None:
        while not stop.wait(every):
            self.check()


def install(watchdog: Watchdog) -> None:
    """Make every run of the loop-lag timer a heartbeat of `watchdog`."""
    tick = LoopLagMonitor._tick

    def beating(monitor: LoopLagMonitor) -> None:
        watchdog.beat()
        tick(monitor)

    LoopLagMonitor._tick = beating  # type: ignore[method-assign,assignment]


def summarize(gateway_log: Path) -> list[tuple[int, str]]:
    """(samples, innermost frame) of the watchdog's lines in `gateway_log`, most first."""
    counts: collections.Counter[str] = collections.Counter()
    for line in gateway_log.read_text(errors="replace").splitlines():
        if log.name not in line:  # most lines: no JSON decode
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line of something else that names the logger
            continue
        if isinstance(entry, dict) and entry.get("logger") == log.name and entry.get("stack"):
            counts[entry["stack"].splitlines()[-1]] += 1
    return [(count, frame) for frame, count in counts.most_common()]


def main() -> None:
    watchdog = Watchdog(threading.main_thread().ident or 0)
    install(watchdog)
    # Never stopped: a daemon thread ends with the process.
    threading.Thread(
        target=watchdog.run, args=(threading.Event(),), name="stallwatch", daemon=True
    ).start()
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
