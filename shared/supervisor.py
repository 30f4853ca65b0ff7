"""Keeping `make run`'s children alive: whatever exits without being asked is started again.

A `Supervisor` watches children (a service process, the embedded Redis, the embedded PostgreSQL)
through the small `Child` protocol. A child that exits on its own is restarted after a delay from
`shared.backoff.Backoff` (full jitter, capped), so a child that keeps crashing is retried ever
more slowly and never in lockstep with another; a child that then stays up for `stable_after`
seconds starts from the shortest delay again. Every exit, restart and failed start is reported
through `say` (the stack's log). The other children are left alone: they ride out the outage
the way they would in production. `check` is one pass and never blocks except inside a child's
own `start`; `stop_all` stops the children in reverse order and is what shutdown uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.backoff import Backoff

RESTART_BASE = 0.5  # seconds: the first restart comes within half a second
RESTART_MAX = 15.0  # seconds: a child that keeps crashing is retried at least this often
STABLE_AFTER = 30.0  # seconds up before a child's next crash counts as a first one again


class Child(Protocol):
    """Something the supervisor keeps running. `start` raises if it could not start."""

    name: str

    def start(self) -> None: ...

    def exit_status(self) -> int | None:
        """The status of an exit the supervisor did not ask for; None while it runs."""
        ...

    def stop(self) -> None: ...


def _backoff() -> Backoff:
    return Backoff(base=RESTART_BASE, maximum=RESTART_MAX, minimum=0.1)


@dataclass
class _Watched:
    child: Child
    backoff: Backoff = field(default_factory=_backoff)
    up_since: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # set while the child is down and a restart is due
    restarts: int = 0


class Supervisor:
    """Restarts children that exit unasked. Not thread-safe: one thread calls `check`/`run`."""

    def __init__(
        self,
        children: Sequence[Child],
        say: Callable[[str], None],
        *,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self._watched = [_Watched(child) for child in children]
        self._say = say
        self._stable_after = stable_after

    def check(self) -> None:
        """One pass: note exits, schedule restarts, run the restarts that are due."""
        for watched in self._watched:
            now = time.monotonic()
            if watched.restart_at is None:
                status = watched.child.exit_status()
                if status is None:
                    if now - watched.up_since >= self._stable_after:
                        watched.backoff.reset()
                    continue
                self._schedule(watched, f"exited with status {status}")
            elif now >= watched.restart_at:
                self._restart(watched)

    def run(self, stop: threading.Event, interval: float = 0.2) -> None:
        """`check` every `interval` seconds until `stop` is set."""
        while not stop.wait(interval):
            self.check()

    def stop_all(self) -> None:
        """Stop every child, last started first (idempotent: children's `stop` is)."""
        for watched in reversed(self._watched):
            watched.child.stop()

    def _schedule(self, watched: _Watched, why: str) -> None:
        delay = watched.backoff.next_delay()
        watched.restart_at = time.monotonic() + delay
        watched.restarts += 1
        self._say(
            f"{watched.child.name} {why}; restarting in {delay:.2f} s (restart {watched.restarts})"
        )

    def _restart(self, watched: _Watched) -> None:
        try:
            watched.child.start()
        except Exception as exc:
            self._schedule(watched, f"failed to start ({exc})")
            return
        watched.restart_at = None
        watched.up_since = time.monotonic()
        self._say(f"{watched.child.name} restarted")
