"""The `process_*` metrics of `/metrics`, without listing every open file descriptor on the
event loop.

prometheus_client's default `ProcessCollector` counts open descriptors as
`len(os.listdir("/proc/self/fd"))`: the kernel builds an entry per descriptor, so a scrape of a
gateway holding 10,000 WebSockets held its event loop 7 ms (19 ms the first time after the
descriptors changed: after a reconnect storm), every connection's frames waiting behind it, and
proportionally longer above (docs/performance-notes.md). Since Linux 6.2, `stat()` of
`/proc/self/fd` reports the number of open descriptors as its size, in microseconds whatever
their number (the kernel change was made for exactly this metric). `ProcessMetrics` exports the
same six metrics, names and help texts as prometheus_client's collector, and counts descriptors
that way; on an older kernel (the size is 0 there) it lists them as before. The one difference:
the listing's own descriptor on the directory is not counted.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import PROCESS_COLLECTOR
from prometheus_client.registry import Collector

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGESIZE = resource.getpagesize()


class ProcessMetrics(Collector):
    """This process's CPU, memory, start time and file descriptors (Linux `/proc`; nothing
    where `proc` cannot be read)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._self = os.path.join(proc, "self")
        self._boot_time = _boot_time(proc)

    def collect(self) -> Iterable[Metric]:
        if self._boot_time is None:
            return []
        metrics: list[Metric] = []
        with contextlib.suppress(OSError):
            metrics += self._stat()
        with contextlib.suppress(OSError):
            metrics += self._descriptors()
        return metrics

    def _stat(self) -> list[Metric]:
        with open(os.path.join(self._self, "stat"), "rb") as stat:
            # Fields after the command name, which may itself hold spaces and parentheses.
            fields = stat.read().rpartition(b")")[2].split()
        start = float(fields[19]) / _TICKS + (self._boot_time or 0.0)
        return [
            GaugeMetricFamily(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                value=float(fields[20]),
            ),
            GaugeMetricFamily(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                value=float(fields[21]) * _PAGESIZE,
            ),
            GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                value=start,
            ),
            CounterMetricFamily(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                value=(float(fields[11]) + float(fields[12])) / _TICKS,
            ),
        ]

    def _descriptors(self) -> list[Metric]:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return [
            GaugeMetricFamily(
                "process_open_fds",
                "Number of open file descriptors.",
                value=float(open_descriptors(os.path.join(self._self, "fd"))),
            ),
            GaugeMetricFamily(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                value=float("inf") if limit == resource.RLIM_INFINITY else float(limit),
            ),
        ]


def open_descriptors(fd_dir: str = "/proc/self/fd") -> int:
    """How many descriptors the process has open: the size the kernel reports for its `fd`
    directory (Linux 6.2 and later), else a listing of it, less the listing's own."""
    counted = os.stat(fd_dir).st_size
    if counted > 0:
        return counted
    return len(os.listdir(fd_dir)) - 1


def _boot_time(proc: str) -> float | None:
    with contextlib.suppress(OSError), open(os.path.join(proc, "stat"), "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return None


def replace_default(registry: CollectorRegistry) -> None:
    """Put `ProcessMetrics` in the place of prometheus_client's process collector in `registry`
    (the default registry holds it from import); nothing if that collector is not there."""
    with contextlib.suppress(KeyError):
        registry.unregister(PROCESS_COLLECTOR)
        registry.register(ProcessMetrics())
