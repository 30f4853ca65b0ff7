"""The faults of a chaos run, one step each: issue 14's table, then issue 13's additions.

A fault is anything with a `name` (its command-line id), a `title` (its row in the report) and
two coroutines. `inject(system)` does the damage and returns when the fault is over: when `make
run` has restarted what was killed, or after the pause for a SIGSTOP. `restore(system)` puts
back what nothing else will (the second gateway, which no supervisor watches) once the step was
measured. Everything else comes back on its own — that is what is being measured. A new fault
is one more class here and one more entry in `faults()`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Protocol

from chaos.system import System


class Fault(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    async def inject(self, system: System) -> None: ...

    async def restore(self, system: System) -> None: ...


async def _restarted(system: System, part: str, old_pid: int, timeout: float = 60) -> None:
    """Return once `part` runs again as a new process (started by `make run`'s supervisor)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if system.pid_of(part) != old_pid:
                return
        except LookupError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{part} was not restarted within {timeout:g} s")
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Kill:
    """kill -9 (or `signal`: SIGTERM is a clean restart) of one part. The fault lasts until
    `make run` has started it again, except for the second gateway (`restart_by_hand`), which
    nothing supervises: it is started again by `restore`, after the step was measured, and its
    clients meanwhile live on the first."""

    name: str
    title: str
    part: str
    restart_by_hand: bool = False
    signal: signal.Signals = signal.SIGKILL

    async def inject(self, system: System) -> None:
        pid = system.pid_of(self.part)
        os.kill(pid, self.signal)
        if not self.restart_by_hand:
            await _restarted(system, self.part, pid)

    async def restore(self, system: System) -> None:
        if self.restart_by_hand:
            await asyncio.to_thread(system.start_gateway2)


@dataclass(frozen=True)
class Pause:
    """SIGSTOP of one part for `seconds`, then SIGCONT: a process that hangs, sockets open."""

    name: str
    title: str
    part: str
    seconds: float

    async def inject(self, system: System) -> None:
        pid = system.pid_of(self.part)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    async def restore(self, system: System) -> None:
        pass


@dataclass(frozen=True)
class FastShutdown:
    """PostgreSQL's fast shutdown (SIGINT to the postmaster: what `pg_ctl -m fast` sends); the
    devstack's supervisor starts it again, which makes it a fast restart."""

    name: str
    title: str

    async def inject(self, system: System) -> None:
        pid = system.pid_of("postgres")
        os.kill(pid, signal.SIGINT)
        await _restarted(system, "postgres", pid)

    async def restore(self, system: System) -> None:
        pass


def faults(pause: float) -> list[Fault]:
    """Every fault, in run order; `pause` is how long a SIGSTOP lasts."""
    return [
        Kill("kill-gateway2", "kill -9 of the second gateway", "gateway2", restart_by_hand=True),
        Kill("kill-gateway", "kill -9 of the gateway `make run` started", "gateway"),
        Kill("kill-redis", "Redis kill -9 (restarted by `make run`)", "redis"),
        Kill(
            "restart-redis",
            "Redis restart (SIGTERM, started again by `make run`)",
            "redis",
            signal=signal.SIGTERM,
        ),
        Pause("pause-redis", f"Redis SIGSTOP {pause:g} s", "redis", pause),
        FastShutdown("restart-postgres", "PostgreSQL fast restart (by `make run`)"),
        Pause(
            "pause-notifications",
            f"notifications_svc SIGSTOP {pause:g} s",
            "notifications_svc",
            pause,
        ),
        # The devstack's agent_svc, its workers mid-answer (20 answers stream at all times):
        # the second agent's workers, or the restarted ones, take their answers over.
        Kill("kill-agent", "kill -9 of an agent worker process mid-answer", "agent_svc"),
    ]
