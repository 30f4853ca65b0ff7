"""`gateway.ordering.OffsetOrder`, the topic ordering state (pure): held while syncing,
delivered once in offset order, duplicates dropped, gaps and new epochs reported — each by
example, then a Hypothesis state machine that interleaves publications, lost histories, pub/sub
outages and the owner's history reads against a model of the topic."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from gateway import ordering
from gateway.ordering import OFFSET_HOLD_LIMIT as HOLD_LIMIT
from gateway.ordering import OffsetAction as Verdict
from gateway.ordering import OffsetOrder as TopicCursor
from tests.support.pubsub_link import PubSubLinkMachine


def test_holds_while_syncing_then_delivers_what_follows_the_position() -> None:
    """Publications arriving during the history read are held; those at or before the read
    position are dropped on resume, the next ones delivered in order."""
    cursor = TopicCursor()
    for offset in (3, 4, 5):
        assert cursor.live(offset, "e", b"%d" % offset) is Verdict.HOLD
    due, gap = cursor.resume(3, "e")
    assert [h.offset for h in due] == [4, 5] and not gap
    assert cursor.offset == 5 and not cursor.syncing


def test_live_next_offset_delivers_duplicate_dropped_gap_reported() -> None:
    """Live: next offset delivered, an old one is a duplicate, a skipped one is a gap."""
    cursor = TopicCursor()
    cursor.resume(7, "e")
    assert cursor.live(8, "e", b"") is Verdict.DELIVER
    assert cursor.live(8, "e", b"") is Verdict.DUPLICATE
    assert cursor.live(10, "e", b"") is Verdict.GAP
    assert cursor.offset == 8


def test_new_epoch_is_a_gap() -> None:
    """A publication of another epoch (Redis lost the history) is reported as a gap."""
    cursor = TopicCursor()
    cursor.resume(2, "old")
    assert cursor.live(1, "new", b"") is Verdict.GAP


def test_gap_among_held_publications_asks_for_another_sync() -> None:
    """Held publications beyond a hole: those before it are due, then a sync is needed."""
    cursor = TopicCursor()
    for offset in (2, 3, 5):
        cursor.live(offset, "e", b"")
    due, gap = cursor.resume(1, "e")
    assert [h.offset for h in due] == [2, 3] and gap


def test_overflow_of_the_held_list_asks_for_another_sync() -> None:
    """More held publications than HOLD_LIMIT: memory stays bounded and a sync follows."""
    cursor = TopicCursor()
    for offset in range(1, HOLD_LIMIT + 10):
        cursor.live(offset, "e", b"")
    due, gap = cursor.resume(0, "e")
    assert len(due) == HOLD_LIMIT and gap


def test_link_lost_during_a_history_read_asks_for_another_sync() -> None:
    """The link drops and comes back while the history is read: the read may predate what was
    lost, so no second sync starts then (`resync` False), but `resume` reports a gap, once."""
    cursor = TopicCursor()
    cursor.resume(2, "e")
    assert cursor.resync() is True  # live: the owner starts a sync
    cursor.start_sync()
    assert cursor.resync() is False  # the link dropped again during that sync's read
    due, gap = cursor.resume(2, "e")
    assert due == [] and gap
    cursor.start_sync()
    assert cursor.resume(3, "e") == ([], False)


# The state machine.

HISTORY = 4  # publications the topic's history keeps: the most a sync can recover
HOLD = 3  # the cursor's held list, small enough for the machine to overflow it


@dataclass
class _Read:
    """A history read of the owner's: the subscribe's (`since` the client's, or None) or a
    sync's (`since` the cursor's position); `recovery` (position offset, epoch, recovered,
    offsets) once read."""

    since: tuple[int, str] | None
    subscribe: bool = False
    recovery: tuple[int, str, bool, list[int]] | None = None


class TopicOrderingMachine(PubSubLinkMachine[tuple[int, str]]):
    """One topic and one subscription's cursor, driven as `gateway.subscriptions` drives it.
    Publications take consecutive offsets in an epoch (a new epoch, from offset 1, when the
    history is lost); the history keeps the last `HISTORY`. Live frames reach the subscriber in
    publish order while the link is up and are lost while it is down; the link coming back
    starts a sync of a cursor that is not syncing. Each history read (the subscribe's, then
    each sync's) is taken at one step and applied at a later one, live frames arriving between,
    as they do around the owner's awaits."""

    @initialize(
        before=st.integers(min_value=0, max_value=2 * HISTORY),
        back=st.integers(min_value=0, max_value=2 * HISTORY),
        resume=st.booleans(),
    )
    def setup(self, before: int, back: int, resume: bool) -> None:
        """`before` publications precede the subscribe; a resuming client (`resume`) asks
        `since` the one `back` from the latest (more than the history holds: not recovered)."""
        self.hold_limit = ordering.OFFSET_HOLD_LIMIT
        ordering.OFFSET_HOLD_LIMIT = HOLD
        self.epochs = ["e0"]
        self.published = {"e0": before}  # latest offset per epoch
        self.link_up = True
        self.in_flight: list[tuple[int, str]] = []
        self.cursor = TopicCursor()
        self.delivered: list[tuple[int, str]] = []
        self.start: tuple[int, str] | None = None  # the subscribe's position
        since = (max(0, before - back), "e0") if resume else None
        self.read: _Read | None = _Read(since, subscribe=True)
        self.ended = False  # INSUFFICIENT_STATE: the owner learned a gap cannot be closed

    @property
    def epoch(self) -> str:
        return self.epochs[-1]

    @rule()
    def publish(self) -> None:
        self.published[self.epoch] += 1
        if self.link_up:
            self.in_flight.append((self.published[self.epoch], self.epoch))

    @rule()
    def lose_history(self) -> None:
        self.epochs.append(f"e{len(self.epochs)}")
        self.published[self.epoch] = 0

    @precondition(lambda self: self.in_flight)
    @rule()
    def deliver_live(self) -> None:
        offset, epoch = self.in_flight.pop(0)
        if self.ended:
            return
        verdict = self.cursor.live(offset, epoch, (offset, epoch))
        if verdict is Verdict.DELIVER:
            self.delivered.append((offset, epoch))
        elif verdict is Verdict.GAP:
            self._start_sync()

    def resynced(self) -> None:
        if not self.ended and self.cursor.resync():
            self._start_sync()

    def _start_sync(self) -> None:
        self.cursor.start_sync()
        self.read = _Read((self.cursor.offset, self.cursor.epoch))

    @precondition(lambda self: self.read is not None and self.read.recovery is None)
    @rule()
    def read_history(self) -> None:
        assert self.read is not None
        self.read.recovery = self._recover(self.read.since)

    def _recover(self, since: tuple[int, str] | None) -> tuple[int, str, bool, list[int]]:
        """What `shared.topic_store.recover` answers."""
        latest, epoch = self.published[self.epoch], self.epoch
        if since is None:
            return latest, epoch, True, []
        offset, since_epoch = since
        if since_epoch != epoch or offset > latest or latest - offset > HISTORY:
            return latest, epoch, False, []
        return latest, epoch, True, list(range(offset + 1, latest + 1))

    @precondition(lambda self: self.read is not None and self.read.recovery is not None)
    @rule()
    def apply_read(self) -> None:
        read, self.read = self.read, None
        assert read is not None and read.recovery is not None
        offset, epoch, recovered, publications = read.recovery
        if self.ended:
            return
        if read.subscribe:
            # Recovered: the client gets what followed its `since`; else it is told so and
            # continues from the topic's position.
            self.start = (read.since[0], epoch) if read.since and recovered else (offset, epoch)
        elif not recovered:
            self.ended = True
            return
        self.delivered.extend((published, epoch) for published in publications)
        due, gap = self.cursor.resume(offset, epoch)
        self.delivered.extend((held.offset, held.epoch) for held in due)
        if gap:
            self._start_sync()

    @invariant()
    def once_in_order_without_gaps(self) -> None:
        if self.start is None:
            assert self.delivered == []
            return
        offset, epoch = self.start
        expected = [(offset + n, epoch) for n in range(1, len(self.delivered) + 1)]
        assert self.delivered == expected

    def teardown(self) -> None:
        """Quiescence: the link back, every frame delivered, every read applied. Then the
        subscriber has every publication of its epoch after its subscribe position — or it was
        ended because they could not be recovered."""
        if not hasattr(self, "cursor"):
            return
        ordering.OFFSET_HOLD_LIMIT = self.hold_limit
        if not self.link_up:
            self.link_back()
        while self.in_flight or self.read is not None:
            if self.in_flight:
                self.deliver_live()
            elif self.read is not None and self.read.recovery is None:
                self.read_history()
            else:
                self.apply_read()
        if self.ended:
            return
        assert self.start is not None
        offset, epoch = self.start
        later = self.epochs[self.epochs.index(epoch) + 1 :]
        assert all(self.published[e] == 0 for e in later), (self.epochs, self.published)
        assert self.delivered == [(o, epoch) for o in range(offset + 1, self.published[epoch] + 1)]


TopicOrderingMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None
)
test_topic_ordering_state_machine = TopicOrderingMachine.TestCase
