"""`gateway.ordering.OffsetOrder`, the topic ordering state (pure): held while syncing,
delivered once in offset order, duplicates dropped, gaps and new epochs reported."""

from __future__ import annotations

from gateway.ordering import OFFSET_HOLD_LIMIT as HOLD_LIMIT
from gateway.ordering import OffsetAction as Verdict
from gateway.ordering import OffsetOrder as TopicCursor


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
