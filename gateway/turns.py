"""Work admitted per event-loop turn: what arrives in one poll beyond a budget waits for the next
turns, so no single turn runs long enough to stall every other connection.

When thousands of sockets become readable at once — clients closing together, a reconnect storm's
handshakes — uvloop runs all of their `data_received` callbacks in the same turn, and each
starts work that continues in the turns after it. A `TurnBudget` counts the chunks a turn parses
(from the turn's first one until the `call_soon` scheduled then runs: the loop runs it on its
next iteration, before polling again); past the budget, a chunk waits in one backlog, first in
first out, with its transport paused (so nothing else of that connection — data, EOF — is read
before it), and the backlog is parsed within the same budget on the following turns. A
connection has at most one chunk in a backlog.

Two budgets use it: client closes of adopted WebSockets (`gateway.wsprotocol`, docs/decisions.md
"Client closes answered on a budget") and new connections' first request (`gateway.httpprotocol`,
"Handshakes admitted on a budget").
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from prometheus_client import Counter


class Deferred(Protocol):
    def parse_deferred(self, data: bytes) -> None:
        """Parse `data`, set aside by a budget on an earlier turn, and read again."""


class TurnBudget:
    """One event loop's budget of `budget` chunks a turn; `deferred` counts the chunks set
    aside."""

    __slots__ = ("backlog", "budget", "deferred", "loop", "scheduled", "spent")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: int, deferred: Counter) -> None:
        self.loop = loop
        self.budget = budget
        self.deferred = deferred
        self.spent = 0
        self.backlog: deque[tuple[Deferred, bytes]] = deque()
        self.scheduled = False  # whether `_drain` is scheduled

    def admit(self) -> bool:
        """Count one chunk to parse now; False once this turn's budget is spent."""
        spent = self.spent
        if spent >= self.budget:
            return False
        if not spent:
            self.loop.call_soon(self._new_turn)
        self.spent = spent + 1
        return True

    def defer(self, parser: Deferred, data: bytes) -> None:
        """Keep `data` for `parser.parse_deferred` on a later turn."""
        self.backlog.append((parser, data))
        self.deferred.inc()
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._drain)

    def _new_turn(self) -> None:
        self.spent = 0

    def _drain(self) -> None:
        # Scheduled after this turn's `_new_turn`, so it runs first in the turn: what waited
        # longest goes before what the coming poll brings.
        backlog = self.backlog
        while backlog and self.admit():
            parser, data = backlog.popleft()
            parser.parse_deferred(data)
        if backlog:
            self.loop.call_soon(self._drain)
        else:
            self.scheduled = False


class PerLoop:
    """The running loop's `TurnBudget` of one kind, made on first use (one loop per gateway
    process; tests run one loop at a time)."""

    __slots__ = ("_budget", "_current", "_deferred")

    def __init__(self, budget: int, deferred: Counter) -> None:
        self._budget = budget
        self._deferred = deferred
        self._current: TurnBudget | None = None

    def of(self, loop: asyncio.AbstractEventLoop) -> TurnBudget:
        current = self._current
        if current is None or current.loop is not loop:
            current = self._current = TurnBudget(loop, self._budget, self._deferred)
        return current
