"""Every Redis key, channel and stream name of the system, in one place.

The first two are the seed's and are a compatibility promise. Channels live in their own
namespace (`ch:`) so a `KEYS`/`SCAN` for data keys never confuses them with registry sets.
"""

from __future__ import annotations

from uuid import UUID


# Seed registry keys.
def ws_session(session_id: UUID | str) -> str:
    """Set of live connection ids attached to a session, across all gateway instances."""
    return f"ws:session:{session_id}"


def user_sessions(user_id: UUID | str) -> str:
    """Set of the user's sessions that have at least one live connection."""
    return f"user:sessions:{user_id}"


def ws_user(user_id: UUID | str) -> str:
    """Set of the user's live connection ids across every gateway (the per-user cap)."""
    return f"ws:user:{user_id}"


def session_owner(session_id: UUID | str) -> str:
    """The user agent_svc confirmed as the session's owner (a session never changes owner):
    written by a gateway only after agent_svc's claim answered yes, so any gateway can skip the
    claim for a reconnecting client. Absent is no answer; agent_svc stays the authority."""
    return f"ws:owner:{session_id}"


def user_seq(user_id: UUID | str) -> str:
    """The user's latest notification seq as far as Redis knows (`shared.publish.notification`
    raises it atomically with each publish; a gateway also stores the notifications service's
    answer): never below the highest seq published to the user's channel, never above the
    highest committed. Hash-tagged with the user's channel, so on a Redis Cluster it shares the
    channel's slot and one script may raise it and SPUBLISH. Absent is no answer."""
    return f"ws:seq:{{{user_channel(user_id)}}}"


# Per-user limits of the WebSocket gateway.
def user_rate(user_id: UUID | str) -> str:
    """Client frames of one user in the current one-second window, across every gateway."""
    return f"ws:rate:user:{user_id}"


# Gateway instance liveness, so the registry heals when an instance dies without cleaning up.
GATEWAY_INSTANCES = "gw:instances"  # set of instance ids that may hold registry entries


def gateway_alive(instance_id: str) -> str:
    """Expires about two heartbeats after the instance's last beat."""
    return f"gw:instance:{instance_id}"


def gateway_replies_wake(reader_id: str, lane: int) -> str:
    """Stream: entries that wake one lane of a gateway's shared reply reader when its set of
    reply streams changes (gateway.replies); capped, and expiring once the gateway is gone."""
    return f"gw:replies:wake:{reader_id}:{lane}"


def gateway_connections(instance_id: str) -> str:
    """Hash: connection id -> "<session_id> <user_id>" for every connection the instance holds."""
    return f"gw:instance:{instance_id}:conns"


# Fan-out channels (pub/sub). Payloads are envelopes: see shared.wire.
def user_channel(user_id: UUID | str) -> str:
    return f"ch:user:{user_id}"


def session_channel(session_id: UUID | str) -> str:
    return f"ch:session:{session_id}"


BROADCAST_CHANNEL = "ch:broadcast"

# Notifications ingestion (producers without HTTP).
NOTIFICATIONS_INGEST_STREAM = "notifications:ingest"
NOTIFICATIONS_INGEST_GROUP = "notifications_svc"
NOTIFICATIONS_DEAD_LETTER_STREAM = "notifications:ingest:dead"

# Chat.
CHAT_REQUESTS_STREAM = "chat:requests"
CHAT_REQUESTS_GROUP = "agents"
CHAT_REQUESTS_DEAD_LETTER = "chat:requests:dead"  # requests whose signature did not verify


def chat_inflight(user_id: UUID | str) -> str:
    """Sorted set: the user's message ids in `chat:requests`, scored by a lease deadline (ms).
    Hash-tagged with the stream's name: one slot, so a script may touch both (shared.chat_queue)."""
    return f"chat:inflight:{{{CHAT_REQUESTS_STREAM}}}:{user_id}"


def chat_queue(user_id: UUID | str) -> str:
    """List: the user's questions waiting for a place in `chat:requests`, as
    "<message id> <request>"."""
    return f"chat:queue:{{{CHAT_REQUESTS_STREAM}}}:{user_id}"


def chat_reply_stream(message_id: UUID | str) -> str:
    """One answer's events; entry ids are the SSE event ids."""
    return f"chat:reply:{message_id}"


def chat_cancel(message_id: UUID | str) -> str:
    """Set when a client cancels an answer; workers poll it between deltas."""
    return f"chat:cancel:{message_id}"


def chat_active(session_id: UUID | str) -> str:
    """The message id of the answer streaming in a session (one at a time); expires on its own
    when no worker refreshes it."""
    return f"chat:active:{session_id}"


# Live chat workers: a sorted set of consumer names scored by their last heartbeat (epoch
# seconds), so a gateway can tell a question would wait for nobody.
CHAT_WORKERS = "chat:workers"

# Notifications the agent scheduled for later: a sorted set scored by due time (epoch seconds).
AGENT_SCHEDULED_NOTIFICATIONS = "agent:scheduled"


def agent_user_reminders(user_id: UUID | str) -> str:
    """Sorted set: ids of the user's scheduled notifications by due time (the per-user cap)."""
    return f"agent:scheduled:user:{user_id}"


# Topics (docs/topics.md). Every key of one topic carries the topic in a hash tag, so they share
# a Redis Cluster slot and one Lua script may touch them all (and SPUBLISH on its channel, which
# hashes to the same slot). Topic names cannot contain braces (shared.topics).
def topic_channel(topic: str) -> str:
    """Pub/sub channel of one topic's publications, join and leave events."""
    return f"ch:topic:{{{topic}}}"


def topic_history(topic: str) -> str:
    """Stream of the topic's recent publications; entry id `<offset>-0`, field `d` = data."""
    return f"topic:{{{topic}}}:history"


def topic_meta(topic: str) -> str:
    """Hash: `e` the topic's epoch, `s` its last offset."""
    return f"topic:{{{topic}}}:meta"


def topic_idempotency(topic: str, key: str) -> str:
    """Hash: `e`, `s` of the publication made with this Idempotency-Key."""
    return f"topic:{{{topic}}}:idem:{key}"


def topic_presence(topic: str) -> str:
    """Hash: connection id -> presence entry JSON."""
    return f"topic:{{{topic}}}:presence"


def topic_presence_expiry(topic: str) -> str:
    """Sorted set: connection id scored by when its presence expires (Unix ms)."""
    return f"topic:{{{topic}}}:presence:exp"


# Producers that publish to topics through Redis rather than HTTP; every gateway consumes it.
TOPICS_INGEST_STREAM = "topics:ingest"
TOPICS_INGEST_GROUP = "gateways"
