"""The `process_*` metrics: prometheus_client's six series, with open descriptors counted by the
kernel instead of a listing of `/proc/self/fd` held on the event loop."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import PROCESS_COLLECTOR, ProcessCollector

from shared.process_metrics import ProcessMetrics, open_descriptors, replace_default

KERNEL_COUNTS = os.stat("/proc/self/fd").st_size > 0  # Linux 6.2 and later


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _no_listing(path: object) -> list[str]:
    raise AssertionError(f"listed {path}")


def test_open_descriptors_follow_what_is_opened_and_closed(sockets: list[socket.socket]) -> None:
    """Opening 300 sockets adds 300 to the count, closing them takes 300 off."""
    before = open_descriptors()
    sockets.extend(socket.socket() for _ in range(300))
    assert open_descriptors() == before + 300
    for sock in sockets:
        sock.close()
    assert open_descriptors() == before


@pytest.mark.skipif(not KERNEL_COUNTS, reason="the kernel counts descriptors from Linux 6.2 on")
def test_the_kernels_count_needs_no_listing(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernel reports the count as the directory's size, nothing is listed: the
    count is the listing's, less the listing's own descriptor."""
    sockets.extend(socket.socket() for _ in range(50))
    listed = len(os.listdir("/proc/self/fd")) - 1
    monkeypatch.setattr(os, "listdir", _no_listing)
    assert open_descriptors() == listed


def test_an_older_kernel_gets_the_listing(
    sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the directory's size is 0 (before Linux 6.2), the descriptors are listed: the same
    count."""
    sockets.extend(socket.socket() for _ in range(50))
    expected = len(os.listdir("/proc/self/fd")) - 1
    real_stat = os.stat

    def sizeless(path: str) -> os.stat_result:
        found = real_stat(path)
        return os.stat_result((*found[:6], 0, *found[7:10]))

    monkeypatch.setattr(os, "stat", sizeless)
    assert open_descriptors() == expected


def test_the_same_series_as_prometheus_clients_collector() -> None:
    """The six series of prometheus_client's process collector, same names and types; start
    time and descriptor limit equal, open descriptors one fewer (its listing's own)."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    ProcessCollector(registry=theirs)
    ours.register(ProcessMetrics())
    theirs_text, ours_text = generate_latest(theirs).decode(), generate_latest(ours).decode()
    assert [
        (f.name, f.type, f.documentation) for f in text_string_to_metric_families(ours_text)
    ] == [(f.name, f.type, f.documentation) for f in text_string_to_metric_families(theirs_text)]
    their_values, our_values = _samples(theirs), _samples(ours)
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert our_values[name] == their_values[name], name
    assert our_values["process_open_fds"] == their_values["process_open_fds"] - 1
    assert our_values["process_resident_memory_bytes"] > 0
    assert our_values["process_cpu_seconds_total"] > 0


def test_nothing_where_proc_cannot_be_read(tmp_path: os.PathLike[str]) -> None:
    """Without a readable `/proc` (another system), the collector exports nothing and fails
    nothing."""
    assert list(ProcessMetrics(proc=os.fspath(tmp_path)).collect()) == []


@pytest.mark.skipif(not KERNEL_COUNTS, reason="the kernel counts descriptors from Linux 6.2 on")
def test_replace_default_swaps_prometheus_clients_collector_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry holding prometheus_client's collector holds `ProcessMetrics` instead, once
    however often it is asked; a scrape then lists no descriptors."""
    registry = CollectorRegistry()
    registry.register(PROCESS_COLLECTOR)
    replace_default(registry)
    replace_default(registry)
    monkeypatch.setattr(os, "listdir", _no_listing)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE process_open_fds gauge") == 1
    assert _samples(registry)["process_open_fds"] > 0


def test_replace_default_leaves_a_registry_without_it_alone() -> None:
    """A registry without prometheus_client's collector gets no process metrics."""
    registry = CollectorRegistry()
    replace_default(registry)
    assert "process_" not in generate_latest(registry).decode()
