"""Wire formats of topics: the WebSocket frames of subscriptions, publications and presence, and
the bodies of the topic HTTP endpoints (docs/topics.md).

Pure code, no I/O. Publication `data` is any JSON value, carried as `msgspec.Raw`: the gateway
never decodes it, it forwards the bytes the producer sent (and Redis stored). New fields always
get defaults, so older clients keep working.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec

TopicName = Annotated[str, msgspec.Meta(description="namespace:name (docs/topics.md)")]


class Since(msgspec.Struct, forbid_unknown_fields=True):
    """The position a client had reached: the last offset it saw and that offset's epoch."""

    offset: Annotated[int, msgspec.Meta(ge=0)]
    epoch: str


# Client -> server.


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", forbid_unknown_fields=True):
    topic: TopicName
    since: Since | None = None
    token: str | None = None  # subscription token, for `subscribe: token` namespaces


class Unsubscribe(msgspec.Struct, tag="unsubscribe", tag_field="type", forbid_unknown_fields=True):
    topic: TopicName


class SubRefresh(msgspec.Struct, tag="sub_refresh", tag_field="type", forbid_unknown_fields=True):
    topic: TopicName
    token: str


class PresenceRequest(msgspec.Struct, tag="presence", tag_field="type", forbid_unknown_fields=True):
    topic: TopicName


class PresenceStatsRequest(
    msgspec.Struct, tag="presence_stats", tag_field="type", forbid_unknown_fields=True
):
    topic: TopicName


class Publish(msgspec.Struct, tag="publish", tag_field="type", forbid_unknown_fields=True):
    topic: TopicName
    data: Any


TopicClientFrame = (
    Subscribe | Unsubscribe | SubRefresh | PresenceRequest | PresenceStatsRequest | Publish
)
TOPIC_FRAME_TYPES = frozenset(
    {"subscribe", "unsubscribe", "sub_refresh", "presence", "presence_stats", "publish"}
)


# Server -> client.


class PublicationEntry(msgspec.Struct):
    offset: int
    data: Any


class Subscribed(msgspec.Struct, tag="subscribed", tag_field="type"):
    """`recovered` is true when every publication after `since` is in `publications` (always
    true without `since`); false means some were lost: reload the state. `offset` and `epoch`
    are the position after `publications`. `expires_at` (token subscriptions): send
    `sub_refresh` before it."""

    topic: str
    offset: int
    epoch: str
    recovered: bool
    publications: list[PublicationEntry]
    expires_at: float | None = None


class Unsubscribed(msgspec.Struct, tag="unsubscribed", tag_field="type"):
    """The subscription ended: asked by the client (`code` null), or by the server with a
    `code`: `TOPIC_TOKEN_EXPIRED` (no `sub_refresh` in time), `INSUFFICIENT_STATE` (the
    gateway missed publications it could not recover: subscribe again with `since`)."""

    topic: str
    code: str | None = None
    reason: str | None = None


class Publication(msgspec.Struct, tag="publication", tag_field="type"):
    topic: str
    offset: int
    data: Any


class ClientInfo(msgspec.Struct):
    """One connection in a topic's presence."""

    user_id: str
    session_id: str
    conn_id: str


class Join(msgspec.Struct, tag="join", tag_field="type"):
    topic: str
    user_id: str
    session_id: str


class Leave(msgspec.Struct, tag="leave", tag_field="type"):
    topic: str
    user_id: str
    session_id: str


class PresenceResult(msgspec.Struct, tag="presence_result", tag_field="type"):
    topic: str
    clients: list[ClientInfo]
    truncated: bool = False


class PresenceStats(msgspec.Struct, tag="presence_stats", tag_field="type"):
    topic: str
    clients: int
    users: int


class Published(msgspec.Struct, tag="published", tag_field="type"):
    """Answer to a client's `publish`."""

    topic: str
    offset: int
    epoch: str


class SubRefreshed(msgspec.Struct, tag="sub_refreshed", tag_field="type"):
    topic: str
    expires_at: float


class TopicErrorCode(enum.StrEnum):
    """`error.code` of refused topic frames; `error.details.topic` names the topic. None of
    them closes the connection.

    TOPIC_INVALID not `namespace:name` in the documented charset; TOPIC_UNKNOWN_NAMESPACE no such
    namespace; SUBSCRIBE_FORBIDDEN the namespace does not let this user subscribe (or read
    presence); TOPIC_TOKEN_REQUIRED a token namespace and no token; TOPIC_TOKEN_INVALID a
    token that does not verify, is for another topic or another user; TOPIC_TOKEN_EXPIRED the
    token's `exp` passed; TOO_MANY_TOPICS over `TOPICS_MAX_PER_CONNECTION`; ALREADY_SUBSCRIBED;
    NOT_SUBSCRIBED; PUBLISH_FORBIDDEN the namespace does not let clients publish;
    PUBLICATION_TOO_LARGE over `TOPIC_MAX_PUBLICATION_BYTES`; PRESENCE_DISABLED the namespace
    keeps no presence; TOPIC_UNAVAILABLE Redis did not answer (try again).
    """

    TOPIC_INVALID = "TOPIC_INVALID"
    TOPIC_UNKNOWN_NAMESPACE = "TOPIC_UNKNOWN_NAMESPACE"
    SUBSCRIBE_FORBIDDEN = "SUBSCRIBE_FORBIDDEN"
    TOPIC_TOKEN_REQUIRED = "TOPIC_TOKEN_REQUIRED"
    TOPIC_TOKEN_INVALID = "TOPIC_TOKEN_INVALID"
    TOPIC_TOKEN_EXPIRED = "TOPIC_TOKEN_EXPIRED"
    TOO_MANY_TOPICS = "TOO_MANY_TOPICS"
    ALREADY_SUBSCRIBED = "ALREADY_SUBSCRIBED"
    NOT_SUBSCRIBED = "NOT_SUBSCRIBED"
    PUBLISH_FORBIDDEN = "PUBLISH_FORBIDDEN"
    PUBLICATION_TOO_LARGE = "PUBLICATION_TOO_LARGE"
    PRESENCE_DISABLED = "PRESENCE_DISABLED"
    TOPIC_UNAVAILABLE = "TOPIC_UNAVAILABLE"


# HTTP bodies.


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /internal/v1/topics/{topic}/publications`."""

    data: Any


class PublishAnswer(msgspec.Struct):
    offset: int
    epoch: str


class PresenceAnswer(msgspec.Struct):
    """`GET /api/v1/topics/{topic}/presence` (and the internal variant)."""

    topic: str
    clients: list[ClientInfo]
    users: int
    total: int
    truncated: bool = False


class TopicPath(msgspec.Struct):
    topic: TopicName


class PublishHeaders(msgspec.Struct, kw_only=True):
    """A retry with the same key answers the first publication's position (200) and publishes
    nothing."""

    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = (
        msgspec.field(default=None, name="Idempotency-Key")
    )


class PresenceHeaders(msgspec.Struct, kw_only=True):
    """For a namespace whose subscribers need a subscription token."""

    topic_token: str | None = msgspec.field(default=None, name="X-Topic-Token")


class IngestEntry(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of the `topics:ingest` stream (field `publication`, JSON)."""

    topic: str
    data: Any
    idempotency_key: str | None = None


decode_topic_frame = msgspec.json.Decoder(TopicClientFrame).decode
decode_ingest = msgspec.json.Decoder(IngestEntry).decode
