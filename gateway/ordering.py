"""Notification ordering per connection, free of I/O: state in, decisions out.

In the spirit of python-websockets' Sans-I/O protocol, nothing here sends, sleeps or awaits. The
connection manager feeds it what happened — a live frame with its `seq` arrived, the pub/sub link
came back, a replay page was fetched — and does what it answers: deliver, hold back for the running
replay, drop a duplicate, ask the notifications service for the page after seq N, go live.

The guarantee it keeps, whatever the interleaving of live frames, replay pages, Redis reconnects
and client resumes: a connection sees every notification at most once, in increasing `seq` order,
and — once a replay that started after the last loss has finished — every notification after its
baseline. A gap between live seqs is normal (deleted or push-less notifications); frames are lost
only when the pub/sub link drops, and the manager then starts a replay (`SeqOrder.resync()`).

`SeqOrder` is one connection's state; `Replay` is one catch-up of a group of one user's
connections (one fetch serves them all). `OffsetOrder` does the same for a topic subscription,
whose publications carry a gapless offset per epoch (`gateway.subscriptions`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Action(enum.Enum):
    """What to do with a live notification frame."""

    DELIVER = "deliver"
    HOLD = "hold"  # a replay is running: it will fetch this seq (or a later live frame brings it)
    DROP = "drop"  # at or below the highest seq delivered: a duplicate


class SeqOrder:
    """One connection's ordering state.

    `last_seq` is the highest seq delivered (None: no baseline known, accept what comes). While
    `replaying`, live frames are held back and only the highest held seq (`held`) is remembered;
    the replay runs until it has passed it. A new connection starts replaying: nothing is
    delivered live until `start()` (fresh) or a `Replay` (resume) has set its baseline.
    """

    __slots__ = ("held", "last_seq", "replaying", "stale")

    def __init__(self) -> None:
        self.last_seq: int | None = None
        self.replaying = True
        self.held = 0
        # The link dropped while a replay ran: the page in hand may predate what was lost.
        self.stale = False

    def __repr__(self) -> str:
        return f"<SeqOrder last_seq={self.last_seq} replaying={self.replaying} held={self.held}>"

    def live(self, seq: int) -> Action:
        """A live frame with `seq` arrived; on `DELIVER` it counts as delivered."""
        if self.replaying:
            if seq > self.held:
                self.held = seq
            return Action.HOLD
        last = self.last_seq
        if last is not None and seq <= last:
            return Action.DROP
        self.last_seq = seq
        return Action.DELIVER

    def start(self, baseline: int | None) -> bool:
        """A fresh connection (no resume) takes `baseline`, the user's latest seq fetched after
        its subscription was in place (None: unknown, accept whatever comes). Returns True when
        live frames above the baseline were held meanwhile, or the link dropped since it
        subscribed: the caller must then run a `Replay` from the baseline (the connection stays
        replaying until it ends); else it is live."""
        if baseline is None:
            self.last_seq, self.replaying, self.held, self.stale = None, False, 0, False
            return False
        self.last_seq = baseline
        if self.held <= baseline and not self.stale:
            self.replaying, self.held = False, 0
            return False
        # Held frames beyond the baseline, or a pub/sub reconnect since subscribing (what was
        # lost may be newer than the baseline): replay from it. The replay's first page is
        # fetched after now, so `stale` is answered.
        self.stale = False
        return True

    def resync(self) -> bool:
        """The pub/sub link dropped and came back: what was published meanwhile is lost. Returns
        True when this starts a replay (the caller must run one), False when one is running
        already (it fetches once more before it ends, so what was lost meanwhile — possibly
        newer than the page it holds — is replayed too)."""
        if self.replaying:
            self.stale = True
            return False
        self.replaying, self.held = True, 0
        return True

    @property
    def settled(self) -> int | None:
        """The highest seq delivered while live (None while replaying or without a baseline): a
        sibling connection of the same user may take it as its own baseline."""
        return None if self.replaying else self.last_seq


class Replay:
    """One catch-up of a group of one user's connections, all replaying (the manager runs at
    most one per connection: `SeqOrder.resync()` and `start()` say when one must start).

    Use: fetch the page after `cursor` (None: the latest seq only, to take as baseline), call
    `page()` with its `last_seq`, then for each of its frames `offer()` per connection (deliver
    when True) and `passed()`, then `finished()`. When `finished()` returns False fetch again;
    when it returns True every connection is live. Between the last `finished()` check and the
    switch to live there is no await, so a live frame arrives either before it (held, and one more
    round fetches it) or after (delivered live).
    """

    __slots__ = ("_idle_rounds", "_known", "_orders", "cursor")

    def __init__(self, orders: Sequence[SeqOrder], after: int | None) -> None:
        if not orders:
            raise ValueError("a replay needs at least one connection")
        not_replaying = [o for o in orders if not o.replaying]
        if not_replaying:
            raise RuntimeError(f"expected connections replaying, got {not_replaying!r}")
        self._orders = orders
        self.cursor = after
        self._idle_rounds = 0
        self._known = 0  # the user's latest seq when the last page was read

    def page(self, last_seq: int) -> None:
        """A page arrived whose `last_seq` is the user's latest seq when it was read."""
        self._known = last_seq
        if self.cursor is None:
            self.cursor = last_seq

    @staticmethod
    def offer(order: SeqOrder, seq: int) -> bool:
        """Whether the replayed frame `seq` goes to the connection of `order` (not yet seen);
        if so it counts as delivered."""
        if order.last_seq is None or seq > order.last_seq:
            order.last_seq = seq
            return True
        return False

    def passed(self, seq: int) -> None:
        """Every connection was offered the frame `seq`."""
        cursor = self.cursor
        self.cursor = seq if cursor is None or seq > cursor else cursor

    def finished(self, has_more: bool, had_frames: bool) -> bool:
        """After a page: True when the replay is over (every connection switched to live), False
        to fetch the page after `cursor`. A page that says there is more is followed; otherwise
        the replay continues while a held live seq is beyond the cursor, but gives up on it after
        two empty pages in a row read once it existed (the held seq was deleted, or carries no
        push)."""
        if has_more and had_frames:
            return False
        cursor = self.cursor
        if cursor is None:
            raise RuntimeError("expected a page before finished(), got none")
        held = max(order.held for order in self._orders)
        # An empty page read before the held seq was created could not hold it: it says nothing
        # about that seq (giving up on it there lost it, when a pub/sub reconnect had already
        # spent one empty page on the stale check below).
        missed = not had_frames and held <= self._known
        self._idle_rounds = self._idle_rounds + 1 if missed else 0
        if any(order.stale for order in self._orders):
            # A pub/sub reconnect since this page may have lost newer frames: one more page,
            # fetched after the reconnect, covers them.
            for order in self._orders:
                order.stale = False
            return False
        if held > cursor and self._idle_rounds < 2:
            return False
        for order in self._orders:
            last = order.last_seq
            order.last_seq = cursor if last is None or cursor > last else last
            order.replaying, order.held = False, 0
        return True


# Topics: offsets and epochs (docs/topics.md).

OFFSET_HOLD_LIMIT = 1000


class OffsetAction(enum.Enum):
    """What to do with a live topic publication."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    HOLD = "hold"
    GAP = "gap"


@dataclass(slots=True)
class HeldPublication:
    offset: int
    epoch: str
    frame: object  # what the owner hands back on `resume` (the encoded frame)


@dataclass(slots=True)
class OffsetOrder:
    """One connection's subscription to one topic (`gateway.subscriptions`), the topic
    counterpart of `SeqOrder`: publications carry a gapless `offset` per `epoch`, so unlike
    notifications a skipped offset or a new epoch is a loss, reported as `GAP`, which the owner
    closes from the topic's history.

    Starts syncing: everything live is held (in arrival order, at most `OFFSET_HOLD_LIMIT`, past
    which only the overflow is remembered) until the first `resume(position)`, which hands back
    the held publications that follow the position. Each publication is thus delivered once, in
    offset order, with no gap — or the owner learns it cannot be (`INSUFFICIENT_STATE`)."""

    offset: int = 0
    epoch: str = ""
    syncing: bool = True
    held: list[HeldPublication] = field(default_factory=list)
    overflowed: bool = False
    # The link dropped and came back while a history read was in flight: that read may predate
    # what was lost, so `resume` asks for one more sync.
    stale: bool = False

    def live(self, offset: int, epoch: str, frame: object) -> OffsetAction:
        """Judge a live publication (and advance the cursor when it is delivered)."""
        if self.syncing:
            if len(self.held) < OFFSET_HOLD_LIMIT:
                self.held.append(HeldPublication(offset, epoch, frame))
            else:
                self.overflowed = True
            return OffsetAction.HOLD
        return self._judge(offset, epoch)

    def _judge(self, offset: int, epoch: str) -> OffsetAction:
        if epoch != self.epoch:
            return OffsetAction.GAP
        if offset <= self.offset:
            return OffsetAction.DUPLICATE
        if offset != self.offset + 1:
            return OffsetAction.GAP
        self.offset = offset
        return OffsetAction.DELIVER

    def start_sync(self) -> None:
        """Hold live publications from now on (a gap was found, or the link to Redis came
        back); the owner reads the history after `offset` and then calls `resume`."""
        self.syncing = True

    def resync(self) -> bool:
        """The link to Redis dropped and came back: what was published meanwhile is lost.
        Returns True when the owner must start a sync; False when one is running already (its
        read may predate the loss: `resume` then reports a gap, and the owner syncs again)."""
        if self.syncing:
            self.stale = True
            return False
        return True

    def resume(self, offset: int, epoch: str) -> tuple[list[HeldPublication], bool]:
        """The history was read up to `offset` of `epoch` (and delivered): go live. Returns the
        held publications that are due (in order, cursor advanced past them) and whether a gap
        remains (some held were out of sequence or dropped, or the link dropped during the
        read: sync again)."""
        self.offset, self.epoch, self.syncing = offset, epoch, False
        held, self.held = self.held, []
        overflowed, self.overflowed = self.overflowed or self.stale, False
        self.stale = False
        due: list[HeldPublication] = []
        for entry in held:
            verdict = self._judge(entry.offset, entry.epoch)
            if verdict is OffsetAction.DELIVER:
                due.append(entry)
            elif verdict is OffsetAction.GAP:
                return due, True
        return due, overflowed
