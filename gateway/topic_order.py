"""Ordering of one connection's subscription to one topic: pure code, no I/O.

A cursor knows the last offset delivered and its epoch. Live publications arrive from pub/sub;
while the subscription is being (re)synchronised from the history they are held, in arrival
order (bounded: past `HOLD_LIMIT` only the fact that some were dropped is kept). When the
history read is done, `resume(position)` moves the cursor there and hands back the held ones
to judge again. A judged publication is delivered when it is the next offset of the same epoch,
dropped when already delivered, and reported as a gap otherwise (a lost pub/sub message, or a
new epoch: Redis lost the history) — the owner then resynchronises from the history.

So each publication reaches the connection once, in offset order, with no gap — or the owner
learns it cannot guarantee that and tells the client (`INSUFFICIENT_STATE`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

HOLD_LIMIT = 1000


class Verdict(enum.Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    HOLD = "hold"
    GAP = "gap"


@dataclass(slots=True)
class Held:
    offset: int
    epoch: str
    frame: bytes


@dataclass(slots=True)
class TopicCursor:
    """Starts syncing: everything live is held until the first `resume`."""

    offset: int = 0
    epoch: str = ""
    syncing: bool = True
    held: list[Held] = field(default_factory=list)
    overflowed: bool = False

    def live(self, offset: int, epoch: str, frame: bytes) -> Verdict:
        """Judge a live publication (and advance the cursor when it is delivered)."""
        if self.syncing:
            if len(self.held) < HOLD_LIMIT:
                self.held.append(Held(offset, epoch, frame))
            else:
                self.overflowed = True
            return Verdict.HOLD
        return self._judge(offset, epoch)

    def _judge(self, offset: int, epoch: str) -> Verdict:
        if epoch != self.epoch:
            return Verdict.GAP
        if offset <= self.offset:
            return Verdict.DUPLICATE
        if offset != self.offset + 1:
            return Verdict.GAP
        self.offset = offset
        return Verdict.DELIVER

    def start_sync(self) -> None:
        """Hold live publications from now on (a gap was found, or the link to Redis came
        back); the owner reads the history after `offset` and then calls `resume`."""
        self.syncing = True

    def resume(self, offset: int, epoch: str) -> tuple[list[Held], bool]:
        """The history was read up to `offset` of `epoch` (and delivered): go live. Returns the
        held publications that are due (in order, cursor advanced past them) and whether a gap
        remains (some held were out of sequence or dropped: sync again)."""
        self.offset, self.epoch, self.syncing = offset, epoch, False
        held, self.held = self.held, []
        overflowed, self.overflowed = self.overflowed, False
        due: list[Held] = []
        for entry in held:
            verdict = self._judge(entry.offset, entry.epoch)
            if verdict is Verdict.DELIVER:
                due.append(entry)
            elif verdict is Verdict.GAP:
                return due, True
        return due, overflowed
