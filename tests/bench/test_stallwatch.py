"""The stall watchdog: samples a thread's stack while its loop's heartbeat is late, a bounded
number of times per stall, never before the first beat; and the summary of its log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stallwatch import Watchdog, install, summarize
from gateway.looplag import LoopLagMonitor


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def parked(arrived: threading.Event, release: threading.Event) -> None:
    """What the watched thread is doing when sampled."""
    arrived.set()
    release.wait()


@pytest.fixture
def watched() -> Iterator[int]:
    """A thread parked in `parked` until the test ends; its id."""
    arrived, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=parked, args=(arrived, release))
    thread.start()
    arrived.wait()
    try:
        yield thread.ident or 0
    finally:
        release.set()
        thread.join()


def _samples(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bench.stallwatch"]


def test_a_late_heartbeat_is_sampled_where_the_thread_is(
    watched: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing before the first beat nor while beats come in time; once the last beat is over
    `late` behind, a WARNING line with how far behind and the watched thread's stack, innermost
    frame last (where `parked` waits)."""
    clock = FakeClock()
    watchdog = Watchdog(watched, late=0.015, clock=clock)
    caplog.set_level(logging.WARNING, logger="bench.stallwatch")
    clock.now += 10.0
    watchdog.check()  # no beat yet: start-up is not a stall
    watchdog.beat()
    clock.now += 0.010
    watchdog.check()
    assert _samples(caplog) == []
    clock.now += 0.010
    watchdog.check()
    [sample] = _samples(caplog)
    assert sample.behind_ms == 20.0  # type: ignore[attr-defined]
    assert sample.sample == 1  # type: ignore[attr-defined]
    frames = sample.stack.splitlines()  # type: ignore[attr-defined]
    assert frames[-1].endswith(" wait"), frames
    assert any(frame.endswith(" parked") for frame in frames), frames


def test_samples_per_stall_are_bounded_and_a_new_stall_counts_afresh(
    watched: int, caplog: pytest.LogCaptureFixture
) -> None:
    """At most `samples` lines per stall; a beat ends the stall, and the next one is sampled
    again from 1."""
    clock = FakeClock()
    watchdog = Watchdog(watched, late=0.015, samples=3, clock=clock)
    caplog.set_level(logging.WARNING, logger="bench.stallwatch")
    watchdog.beat()
    for _ in range(6):
        clock.now += 0.01
        watchdog.check()
    assert [r.sample for r in _samples(caplog)] == [1, 2, 3]  # type: ignore[attr-defined]
    watchdog.beat()
    clock.now += 0.02
    watchdog.check()
    assert [r.sample for r in _samples(caplog)] == [1, 2, 3, 1]  # type: ignore[attr-defined]


def test_the_loop_lag_timer_beats_once_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """After `install`, each run of the gateway's loop-lag timer is a heartbeat."""
    monkeypatch.setattr(LoopLagMonitor, "_tick", LoopLagMonitor._tick)  # restored after
    clock = FakeClock()
    watchdog = Watchdog(threading.get_ident(), clock=clock)
    install(watchdog)

    async def one_tick() -> None:
        ticked = asyncio.Event()
        monitor = LoopLagMonitor(
            asyncio.get_running_loop(), lambda lag: ticked.set(), interval=0.001
        )
        monitor.start()
        await ticked.wait()
        monitor.stop()

    asyncio.run(one_tick())
    assert watchdog.last == clock.now


def test_summarize_counts_samples_by_innermost_frame(tmp_path: Path) -> None:
    """The watchdog's lines of a gateway log, counted by innermost frame, most first; other
    lines, JSON or not, are passed over."""
    late = {"logger": "bench.stallwatch", "msg": "event loop late"}
    lines = [
        late | {"stack": "a.py:1 outer\nb.py:2 listdir"},
        {"logger": "gateway.websocket", "msg": "connection opened"},
        late | {"stack": "a.py:1 outer\nb.py:2 listdir"},
        late | {"stack": "a.py:1 outer\nc.py:3 collect"},
    ]
    log = tmp_path / "gateway.log"
    text = "".join(json.dumps(line) + "\n" for line in lines)
    log.write_text(text + "not json\n" + "bench.stallwatch, not json either\n")
    assert summarize(log) == [(2, "b.py:2 listdir"), (1, "c.py:3 collect")]
