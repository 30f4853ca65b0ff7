"""`gateway.ordering`: the per-connection notification ordering core, without sockets, Redis or
processes — each decision by example, then a Hypothesis state machine that interleaves creates,
live deliveries, pub/sub outages, replay pages and new or resuming connections against a model
of the notifications service."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    initialize,
    invariant,
    precondition,
    rule,
)

from gateway.ordering import Action, Replay, SeqOrder
from tests.support.pubsub_link import PubSubLinkMachine


def _live(order: SeqOrder, last_seq: int | None) -> SeqOrder:
    order.start(last_seq)
    return order


def test_new_connection_holds_until_started() -> None:
    """A new connection holds every live frame (remembering the highest) until it has a
    baseline."""
    order = SeqOrder()
    assert order.live(5) is Action.HOLD
    assert order.live(3) is Action.HOLD
    assert order.held == 5
    assert order.settled is None


def test_start_without_held_frames_goes_live() -> None:
    """A baseline at or above every held seq switches to live at once; a later seq is delivered,
    one at or below the baseline is a duplicate."""
    order = SeqOrder()
    order.live(4)
    assert order.start(4) is False
    assert order.replaying is False
    assert order.live(4) is Action.DROP
    assert order.live(5) is Action.DELIVER
    assert order.last_seq == 5
    assert order.settled == 5


def test_start_with_frames_beyond_baseline_asks_for_replay() -> None:
    """Frames held above the baseline (created while it was fetched) make `start()` ask for a
    replay from the baseline; the connection keeps holding."""
    order = SeqOrder()
    order.live(7)
    assert order.start(5) is True
    assert order.replaying is True
    assert order.last_seq == 5
    assert order.live(8) is Action.HOLD


def test_start_without_baseline_accepts_anything_once() -> None:
    """No baseline (notifications service unreachable): every live seq is delivered, still never
    twice and never backwards."""
    order = _live(SeqOrder(), None)
    assert order.live(9) is Action.DELIVER
    assert order.live(9) is Action.DROP
    assert order.live(2) is Action.DROP


def test_gap_between_live_seqs_is_delivered() -> None:
    """A gap between live seqs (deleted or push-less notifications) is not a loss."""
    order = _live(SeqOrder(), 1)
    assert order.live(5) is Action.DELIVER
    assert order.live(6) is Action.DELIVER


def test_resync_starts_one_replay() -> None:
    """After a pub/sub reconnect a live connection starts replaying (True); one already replaying
    does not start a second replay (False)."""
    order = _live(SeqOrder(), 3)
    assert order.resync() is True
    assert order.replaying is True
    assert order.held == 0
    assert order.resync() is False


def test_replay_from_resume_delivers_then_goes_live() -> None:
    """A resume replays what is after the client's seq, in order, and then goes live at the
    cursor: a live duplicate of a replayed frame is dropped."""
    order = SeqOrder()
    replay = Replay([order], 2)
    assert replay.cursor == 2
    replay.page(5)
    delivered = []
    for seq in (3, 4, 5):
        if replay.offer(order, seq):
            delivered.append(seq)
        replay.passed(seq)
    assert delivered == [3, 4, 5]
    assert replay.finished(has_more=False, had_frames=True) is True
    assert order.replaying is False
    assert order.live(5) is Action.DROP
    assert order.live(6) is Action.DELIVER


def test_replay_follows_has_more() -> None:
    """A page that says there is more is followed, whatever is held."""
    order = SeqOrder()
    replay = Replay([order], 0)
    replay.page(10)
    replay.offer(order, 1)
    replay.passed(1)
    assert replay.finished(has_more=True, had_frames=True) is False
    assert replay.cursor == 1


def _page_ends_the_replay(replay: Replay, order: SeqOrder, seq: int) -> None:
    """A page holding `seq` (the user's latest): `order` gets it, and the replay ends there."""
    replay.page(seq)
    assert replay.offer(order, seq)
    replay.passed(seq)
    assert replay.finished(has_more=False, had_frames=True) is True
    assert order.last_seq == seq


def test_replay_continues_past_a_held_live_seq() -> None:
    """A live frame held during the replay beyond its cursor makes it fetch again."""
    order = SeqOrder()
    replay = Replay([order], 0)
    replay.page(0)
    order.live(1)  # created after the page was read
    assert replay.finished(has_more=False, had_frames=False) is False
    _page_ends_the_replay(replay, order, 1)


def test_replay_gives_up_on_a_held_seq_after_two_empty_pages() -> None:
    """A held seq the replay never finds (deleted, or carries no push) stops it after two empty
    pages in a row; the cursor becomes the connection's seq."""
    order = SeqOrder()
    replay = Replay([order], 4)
    order.live(9)
    replay.page(9)
    assert replay.finished(has_more=False, had_frames=False) is False
    assert replay.finished(has_more=False, had_frames=False) is True
    assert order.last_seq == 4
    assert order.live(9) is Action.DELIVER


def test_replay_does_not_give_up_on_a_seq_held_after_its_page_was_read() -> None:
    """An empty page read before a held seq was created says nothing about it: after a pub/sub
    reconnect spent one empty page (the stale check) and a second was read just before the
    seq was published, the replay fetches again and delivers it (it used to go live past it:
    found by the state machine below)."""
    order = SeqOrder()
    replay = Replay([order], 0)
    assert order.resync() is False  # the link dropped and came back during the resume replay
    replay.page(0)
    assert replay.finished(has_more=False, had_frames=False) is False  # stale: once more
    replay.page(0)  # read before seq 1 was created
    assert order.live(1) is Action.HOLD
    assert replay.finished(has_more=False, had_frames=False) is False
    _page_ends_the_replay(replay, order, 1)


def test_baseline_replay_takes_the_latest_seq() -> None:
    """A replay without a cursor takes the page's `last_seq` as baseline and delivers nothing
    older."""
    order = SeqOrder()
    replay = Replay([order], None)
    assert replay.cursor is None
    replay.page(12)
    assert replay.cursor == 12
    assert replay.finished(has_more=False, had_frames=False) is True
    assert order.last_seq == 12


def test_replay_skips_what_each_connection_has_seen() -> None:
    """One replay serves connections at different seqs: each is offered only what it lacks, and
    all end at the same cursor."""
    behind, ahead = _live(SeqOrder(), 2), _live(SeqOrder(), 4)
    behind.resync()
    ahead.resync()
    replay = Replay([behind, ahead], 2)
    replay.page(5)
    got: dict[str, list[int]] = {"behind": [], "ahead": []}
    for seq in (3, 4, 5):
        if replay.offer(behind, seq):
            got["behind"].append(seq)
        if replay.offer(ahead, seq):
            got["ahead"].append(seq)
        replay.passed(seq)
    assert replay.finished(has_more=False, had_frames=True)
    assert got == {"behind": [3, 4, 5], "ahead": [5]}
    assert behind.last_seq == ahead.last_seq == 5


def test_resync_during_replay_forces_a_fresh_page() -> None:
    """A reconnect while a replay runs: what was lost meanwhile may be newer than the page in
    hand, so the replay fetches once more before going live."""
    order = _live(SeqOrder(), 1)
    order.resync()
    replay = Replay([order], 1)
    replay.page(1)  # read before the link dropped again
    assert order.resync() is False  # the link came back: the running replay must cover it
    assert replay.finished(has_more=False, had_frames=False) is False
    replay.page(2)
    assert replay.offer(order, 2)
    replay.passed(2)
    assert replay.finished(has_more=False, had_frames=True) is True


def test_resync_while_the_baseline_is_read_asks_for_replay() -> None:
    """A reconnect between reading a fresh connection's baseline and applying it: what was lost
    may be newer than the baseline, so `start()` asks for a replay from it."""
    order = SeqOrder()
    assert order.resync() is False
    assert order.start(3) is True
    replay = Replay([order], 3)
    replay.page(3)
    assert replay.finished(has_more=False, had_frames=False) is True


def test_replay_refuses_a_live_connection() -> None:
    """A replay of a connection not replaying is a wrong transition and says so."""
    with pytest.raises(RuntimeError, match="expected connections replaying"):
        Replay([_live(SeqOrder(), 0)], 0)
    with pytest.raises(ValueError, match="at least one"):
        Replay([], 0)


def test_finished_before_a_page_is_a_wrong_transition() -> None:
    """`finished()` before the first page of a baseline replay raises, naming the state."""
    with pytest.raises(RuntimeError, match="expected a page"):
        Replay([SeqOrder()], None).finished(has_more=False, had_frames=False)


# The state machine.

PAGE_SIZE = 3


@dataclass
class _Conn:
    order: SeqOrder
    floor: int  # the client is owed every delivered-kind notification above this seq
    delivered: list[int] = field(default_factory=list)
    started: bool = False  # has a baseline (fresh) or a replay from its resume seq


@dataclass
class _Replay:
    core: Replay
    conns: list[_Conn]
    page: list[int] = field(default_factory=list)  # fetched, not yet offered
    has_more: bool = False
    had_frames: bool = False
    fetched: bool = False


class OrderingMachine(PubSubLinkMachine[int]):
    """One user's notifications, the gateway's pub/sub link, and that user's connections on one
    gateway. The model: notifications are created with increasing seqs; a "visible" one is
    published live (if the link is up) and returned by replay pages; a hidden one (deleted, no
    push) by neither. Live frames reach every connection in publish order; frames published
    while the link is down are lost. Replay fetches and offers interleave with everything."""

    conns = Bundle("conns")

    @initialize()
    def setup(self) -> None:
        self.created: list[tuple[int, bool]] = []  # (seq, visible)
        self.link_up = True
        self.in_flight: list[int] = []
        self.all: list[_Conn] = []
        self.replays: list[_Replay] = []
        self.unstarted: list[_Conn] = []

    @property
    def latest(self) -> int:
        return self.created[-1][0] if self.created else 0

    def _visible_after(self, seq: int) -> list[int]:
        return [s for s, visible in self.created if visible and s > seq]

    def _start_replay(self, conns: list[_Conn], after: int | None) -> None:
        core = Replay([c.order for c in conns], after)
        self.replays.append(_Replay(core, conns))

    @rule(visible=st.booleans())
    def create(self, visible: bool) -> None:
        seq = self.latest + 1
        self.created.append((seq, visible))
        if visible and self.link_up:
            self.in_flight.append(seq)

    @precondition(lambda self: self.in_flight)
    @rule()
    def deliver_live(self) -> None:
        seq = self.in_flight.pop(0)
        for conn in self.all:
            if conn.order.live(seq) is Action.DELIVER:
                conn.delivered.append(seq)

    def resynced(self) -> None:
        idle = [c for c in self.all if c.order.resync()]
        if idle:
            known = [c.order.last_seq for c in idle if c.order.last_seq is not None]
            self._start_replay(idle, min(known) if known else None)

    @precondition(lambda self: len(self.all) < 4)
    @rule()
    def connect_fresh(self) -> None:
        conn = _Conn(SeqOrder(), floor=-1)  # the floor is the baseline, once read
        self.all.append(conn)
        self.unstarted.append(conn)

    @precondition(lambda self: any(c.floor < 0 for c in self.unstarted))
    @rule()
    def read_baseline(self) -> None:
        """The notifications service answers the latest seq (the reply may take a while to
        arrive: `apply_baseline` is a separate step)."""
        conn = next(c for c in self.unstarted if c.floor < 0)
        conn.floor = self.latest

    @precondition(lambda self: any(c.floor >= 0 for c in self.unstarted))
    @rule()
    def apply_baseline(self) -> None:
        conn = next(c for c in self.unstarted if c.floor >= 0)
        self.unstarted.remove(conn)
        conn.started = True
        if conn.order.start(conn.floor):
            self._start_replay([conn], conn.floor)

    @precondition(
        lambda self: (
            self.link_up
            and any(c.floor < 0 for c in self.unstarted)
            and any(c.order.settled is not None for c in self.all)
        )
    )
    @rule()
    def sibling_baseline(self) -> None:
        """A fresh connection takes a live sibling's settled seq as its baseline instead of
        asking the service (`ConnectionManager._sibling_baseline`: no await between reading it
        and starting). Only with the link up: a join waits for Redis's confirmation."""
        conn = next(c for c in self.unstarted if c.floor < 0)
        settled = next(c.order.settled for c in self.all if c.order.settled is not None)
        assert settled is not None
        conn.floor = settled
        self.unstarted.remove(conn)
        conn.started = True
        if conn.order.start(settled):
            self._start_replay([conn], settled)

    @precondition(lambda self: len(self.all) < 4)
    @rule(back=st.integers(min_value=0, max_value=5))
    def connect_resume(self, back: int) -> None:
        floor = max(0, self.latest - back)
        conn = _Conn(SeqOrder(), floor=floor, started=True)
        self.all.append(conn)
        self._start_replay([conn], floor)

    @precondition(lambda self: any(not r.fetched for r in self.replays))
    @rule(data=st.data())
    def fetch_page(self, data: st.DataObject) -> None:
        waiting = [r for r in self.replays if not r.fetched]
        self._fetch(data.draw(st.sampled_from(waiting)))

    def _fetch(self, replay: _Replay) -> None:
        cursor = replay.core.cursor
        after = self._visible_after(cursor) if cursor is not None else []
        replay.core.page(self.latest)
        replay.page, replay.has_more = after[:PAGE_SIZE], len(after) > PAGE_SIZE
        replay.had_frames, replay.fetched = bool(replay.page), True

    @precondition(lambda self: any(r.fetched for r in self.replays))
    @rule(data=st.data())
    def replay_step(self, data: st.DataObject) -> None:
        """Offer the next fetched frame to every connection of the replay, or, with the page
        used up, decide whether to go live."""
        fetched = [r for r in self.replays if r.fetched]
        self._step(data.draw(st.sampled_from(fetched)))

    def _step(self, replay: _Replay) -> None:
        if replay.page:
            seq = replay.page.pop(0)
            for conn in replay.conns:
                if replay.core.offer(conn.order, seq):
                    conn.delivered.append(seq)
            replay.core.passed(seq)
            return
        replay.fetched = False
        if replay.core.finished(replay.has_more, replay.had_frames):
            self.replays.remove(replay)

    @invariant()
    def at_most_once_in_order(self) -> None:
        for conn in self.all:
            assert conn.delivered == sorted(set(conn.delivered)), conn.delivered
            if conn.started:
                assert all(seq > conn.floor for seq in conn.delivered), (conn.floor, conn)

    def teardown(self) -> None:
        """Quiescence: the link back, every frame delivered, every connection started, every
        replay run to its end. Then each connection has every visible notification above its
        floor."""
        if not hasattr(self, "all"):
            return
        if not self.link_up:
            self.link_back()
        while self.unstarted or self.in_flight or self.replays:
            if self.in_flight:
                self.deliver_live()
            elif self.unstarted:
                if self.unstarted[0].floor < 0:
                    self.read_baseline()
                self.apply_baseline()
            else:
                replay = self.replays[0]
                if replay.fetched:
                    self._step(replay)
                else:
                    self._fetch(replay)
        for conn in self.all:
            assert conn.delivered == self._visible_after(conn.floor), (conn.floor, conn)


OrderingMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None
)
test_ordering_state_machine = OrderingMachine.TestCase
