"""`shared.wire`: error frames, and the pub/sub envelope round trip and its refusals."""

from __future__ import annotations

import json

import pytest

from shared.wire import EnvelopeMeta, decode_envelope, encode_envelope, error_frame


def test_error_frame() -> None:
    """An `error` frame carries code, message and details under `error`."""
    frame = json.loads(error_frame("INVALID_JSON", "bad", {"at": 3}))
    assert frame == {
        "type": "error",
        "error": {"code": "INVALID_JSON", "message": "bad", "details": {"at": 3}},
    }


def test_envelope_round_trip_keeps_frame_bytes() -> None:
    """The frame's bytes come back untouched (gateways forward them without re-encoding)."""
    frame = b'{"type":"notification","data":{"x":"a\\nb"}}'
    meta, out = decode_envelope(encode_envelope(frame, EnvelopeMeta(seq=7, user_id="u")))
    assert out == frame
    assert (meta.seq, meta.user_id, meta.exclude_session) == (7, "u", None)


def test_envelope_without_meta_has_empty_meta() -> None:
    """No metadata: every field is absent (old and new publishers interoperate)."""
    meta, _ = decode_envelope(encode_envelope(b"{}"))
    assert meta == EnvelopeMeta()


@pytest.mark.parametrize("payload", [b"{}", b"{}\n", b"not json\n{}", b"[1]\n{}"])
def test_not_an_envelope(payload: bytes) -> None:
    """A payload without separator, frame or valid metadata raises `ValueError`."""
    with pytest.raises(ValueError, match="not an envelope"):
        decode_envelope(payload)
