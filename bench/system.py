"""What the benchmark needs from the operating system: CPU pinning, file-descriptor limits,
per-process CPU time and resident memory, and each core's steal time, read from `/proc` (Linux
only).

The gateway under test gets core 0 to itself; the load generator, publisher, Redis and everything
else share the remaining cores, so the generator never steals the gateway's CPU. On a one-core
machine both sides share core 0 and the report says so.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Cores:
    """Which CPUs the server under test and the load side run on."""

    server: frozenset[int]
    load: frozenset[int]

    @property
    def shared(self) -> bool:
        return bool(self.server & self.load)


def plan_cores() -> Cores:
    """Core 0 for the server; the others (or core 0 too, on one core) for the load side."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return Cores(frozenset(available), frozenset(available))
    return Cores(frozenset(available[:1]), frozenset(available[1:]))


def pin(pid: int, cores: frozenset[int]) -> None:
    """Restrict `pid` (0: this process) and the threads it creates from now on to `cores`."""
    os.sched_setaffinity(pid, cores)


SERVER_PRIORITY = -10
LOAD_PRIORITY = -5
# Work that shares the load core but is not an instrument (the chat scenario's agent workers):
# an ordinary process, so the client, Redis and the fake model run ahead of it.
BACKGROUND_PRIORITY = 0


def raise_priority(niceness: int) -> bool:
    """Run this process (and the children it starts from now on) at `niceness` (negative:
    ahead of ordinary processes), so unrelated work on a shared machine does not take the
    benchmark's cores. Needs root (CAP_SYS_NICE); returns whether it was applied."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        return False
    return True


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit as far as the hard limit allows; children inherit
    it. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # after the command name: state is field 3, utime field 14, stime field 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    """The child processes of `pid` (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []


def steal_seconds(stat_text: str | None = None) -> dict[int, float]:
    """Per core, the time the hypervisor gave this virtual machine's core to something else while
    it wanted to run (`/proc/stat`'s steal column), in seconds since boot; {} where unknown.
    A run with much steal measured a noisy host, not the code."""
    if stat_text is None:
        try:
            with open("/proc/stat") as stat:
                stat_text = stat.read()
        except OSError:
            return {}
    stolen: dict[int, float] = {}
    for line in stat_text.splitlines():
        name, *fields = line.split()
        # cpuN user nice system idle iowait irq softirq steal ...
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 8:
            stolen[int(name[3:])] = int(fields[7]) / _TICKS
    return stolen


def reference_loop_seconds(iterations: int = 1_000_000, repeats: int = 3) -> float:
    """Best of `repeats` timings of a fixed pure-Python loop in this process: the same work on
    every run, so two runs' figures say whether the machine itself was as fast (a shared host's
    slow phases do not all show as steal)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i * i % 7
        best = min(best, time.perf_counter() - started)
    return best


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return 0


class CpuMeter:
    """CPU used by a group of processes between `start()` and `stop()`, as cores busy."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        self._cpu0 = 0.0
        self._wall0 = 0.0

    def start(self) -> None:
        self._cpu0 = sum(cpu_seconds(pid) for pid in self.pids)
        self._wall0 = time.monotonic()

    def stop(self) -> float:
        """Cores used on average since `start()` (1.0 = one core fully busy)."""
        wall = max(time.monotonic() - self._wall0, 1e-9)
        return (sum(cpu_seconds(pid) for pid in self.pids) - self._cpu0) / wall
