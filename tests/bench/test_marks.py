"""Benchmark frames: the send time survives the trip and the frame stays a seed notification."""

from __future__ import annotations

import msgspec

from bench import marks
from shared.wire import Notification, decode_envelope, decode_server_frame


def test_filled_template_is_an_envelope_around_a_seed_notification() -> None:
    """The payload is a valid envelope; its frame decodes as the seed's `notification`."""
    payload = marks.Template("3f0c6a8e-8d5b-4a57-9a53-0d3c1f7e2b11").fill(
        marks.TARGETED, 4, 17, 123_456_789
    )
    meta, frame = decode_envelope(payload)
    assert meta.user_id == "3f0c6a8e-8d5b-4a57-9a53-0d3c1f7e2b11"
    assert meta.seq is None
    assert isinstance(decode_server_frame(frame), Notification)
    assert msgspec.json.decode(frame)["data"]["bench"] == "T:4:17:123456789"


def test_parse_reads_back_what_fill_wrote() -> None:
    """kind, step, message number and send time round-trip; other frames parse as None."""
    frame = marks.frame_of(marks.Template(None).fill(marks.BROADCAST, 0, 9, 42))
    assert marks.parse(frame) == (marks.BROADCAST, 0, 9, 42)
    assert marks.parse(b'{"type":"pong","timestamp":"x"}') is None
