"""shared.supervisor: what exits unasked is restarted after a jittered, growing delay; a failed
start is retried; the others are left alone; the log says what happened."""

from __future__ import annotations

import time

from shared.supervisor import Supervisor


class FakeChild:
    """A child whose exit and start failures the test decides."""

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.status: int | None = None
        self.starts = 0
        self.failures = failures  # starts that raise before one succeeds
        self.stopped = False

    def start(self) -> None:
        self.starts += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("port in use")
        self.status = None

    def exit_status(self) -> int | None:
        return self.status

    def stop(self) -> None:
        self.stopped = True


def _check_until(supervisor: Supervisor, done: object, timeout: float = 10) -> None:
    assert callable(done)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline
        supervisor.check()
        time.sleep(0.01)


def test_exited_child_is_restarted_and_the_log_says_so() -> None:
    """A child exiting with -9 is started again within the first delay (at most 0.5 s); the
    other child is not touched."""
    lines: list[str] = []
    crashed, steady = FakeChild("gateway"), FakeChild("redis")
    supervisor = Supervisor([crashed, steady], lines.append)
    crashed.status = -9
    started = time.monotonic()
    _check_until(supervisor, lambda: crashed.starts == 1)
    assert time.monotonic() - started < 1.0
    assert steady.starts == 0
    assert lines[0].startswith("gateway exited with status -9; restarting in ")
    assert lines[-1] == "gateway restarted"


def test_failed_start_is_retried_with_a_growing_delay() -> None:
    """Two failed starts are each reported and retried; the third start succeeds."""
    lines: list[str] = []
    child = FakeChild("postgres", failures=2)
    supervisor = Supervisor([child], lines.append)
    child.status = 1
    _check_until(supervisor, lambda: child.starts == 3 and child.status is None)
    assert [line.split(";")[0] for line in lines] == [
        "postgres exited with status 1",
        "postgres failed to start (port in use)",
        "postgres failed to start (port in use)",
        "postgres restarted",
    ]
    assert "(restart 3)" in lines[2]


def test_stop_all_stops_every_child() -> None:
    """Shutdown stops every child, whatever its state."""
    children = [FakeChild("a"), FakeChild("b")]
    Supervisor(children, print).stop_all()
    assert all(child.stopped for child in children)
