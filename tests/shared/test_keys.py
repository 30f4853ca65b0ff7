"""`shared.keys`: the seed's key names are kept exactly, and the chat queue's keys share a slot
with the request stream."""

from __future__ import annotations

import uuid

from shared import keys


def test_seed_names() -> None:
    """`ws:session:{id}` and `user:sessions:{id}` are the seed's names, unchanged."""
    session, user = uuid.uuid4(), uuid.uuid4()
    assert keys.ws_session(session) == f"ws:session:{session}"
    assert keys.user_sessions(user) == f"user:sessions:{user}"


def test_channels() -> None:
    """Per-user and per-session channels, and one broadcast channel."""
    assert keys.user_channel("u") == "ch:user:u"
    assert keys.session_channel("s") == "ch:session:s"
    assert keys.BROADCAST_CHANNEL == "ch:broadcast"


def test_chat_queue_keys_hash_to_the_request_stream() -> None:
    """The per-user queue keys carry the stream's name as hash tag (one cluster slot)."""
    tag = "{" + keys.CHAT_REQUESTS_STREAM + "}"
    assert tag in keys.chat_inflight("u") and tag in keys.chat_queue("u")
