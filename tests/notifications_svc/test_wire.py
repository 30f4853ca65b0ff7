"""`notifications_svc.wire`: cursors, query-string parsing, the frame built from a stored row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from notifications_svc import wire
from shared.errors import ValidationFailed
from shared.wire import Notification


def test_cursor_round_trip() -> None:
    """A cursor decodes to the seq it was made from and is URL-safe."""
    for seq in (0, 1, 42, wire.MAX_SEQ):
        cursor = wire.encode_cursor(seq)
        assert cursor.replace("-", "").replace("_", "").isalnum()
        assert wire.decode_cursor(cursor) == seq


@pytest.mark.parametrize(
    "cursor", ["", "!!", "czo", "eDox", "czotMQ", wire.encode_cursor(wire.MAX_SEQ + 1), "czrCsg"]
)
def test_foreign_cursor_is_refused(cursor: str) -> None:
    """Anything not made by encode_cursor (junk, other prefixes, negative, beyond bigint,
    non-ASCII digits) is a 422."""
    with pytest.raises(ValidationFailed):
        wire.decode_cursor(cursor)


def test_parse_helpers() -> None:
    """Integers are bounded, booleans accept the usual spellings, and the rest is a 422."""
    assert wire.parse_int(None, "page", default=1, low=1, high=5) == 1
    assert wire.parse_int("5", "page", default=1, low=1, high=5) == 5
    for bad in ("6", "0", "x", "1.0"):
        with pytest.raises(ValidationFailed, match="page"):
            wire.parse_int(bad, "page", default=1, low=1, high=5)
    assert [wire.parse_bool(v, "b") for v in ("true", "1", "YES", "false", "0", None)] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(ValidationFailed):
        wire.parse_bool("maybe", "b")
    with pytest.raises(ValidationFailed):
        wire.parse_uuid("nope", "id")


def test_frame_from_row_is_the_seed_frame() -> None:
    """The frame carries the seed's fields, data.seq, and the creation time as timestamp."""
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row = wire.Stored(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        seq=7,
        title="t",
        content="c",
        type="reminder",
        action={"type": "open"},
        related_entity_type=None,
        related_entity_id=None,
        is_read=False,
        read_at=None,
        created_at=created,
        updated_at=created,
    )
    decoded = msgspec.json.decode(wire.frame_bytes(row))
    assert decoded == {
        "type": "notification",
        "data": {
            "id": str(row.id),
            "title": "t",
            "content": "c",
            "notification_type": "reminder",
            "action": {"type": "open"},
            "created_at": "2026-01-02T03:04:05.678901+00:00",
            "related_entity_type": None,
            "related_entity_id": None,
            "is_read": False,
            "seq": 7,
        },
        "timestamp": "2026-01-02T03:04:05.678901+00:00",
    }
    assert msgspec.json.decode(wire.frame_bytes(row), type=Notification).data.seq == 7
