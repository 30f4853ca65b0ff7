"""Topic rules of the gateway: who may subscribe, read presence and publish, and the publishing
and presence operations every entry point shares (WebSocket frames, the public and internal API
endpoints, the ingest stream).

Every refusal raises `TopicRefused` with a stable code (`shared.topic_wire.TopicErrorCode`); the
WebSocket turns it into an `error` frame (never a close), HTTP into a JSON error with a status.
A user is never given a topic, its history or its presence unless `authorize` said yes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from uuid import UUID

import msgspec

from shared.auth import TokenError, TokenVerifier
from shared.errors import AppError
from shared.settings import Settings
from shared.topic_store import Position, TopicStore
from shared.topic_wire import ClientInfo, PresenceAnswer
from shared.topic_wire import TopicErrorCode as Code
from shared.topics import Namespace, Namespaces, Topic, TopicError

_STATUS = {
    Code.TOPIC_INVALID: 422,
    Code.TOPIC_UNKNOWN_NAMESPACE: 404,
    Code.SUBSCRIBE_FORBIDDEN: 403,
    Code.TOPIC_TOKEN_REQUIRED: 403,
    Code.TOPIC_TOKEN_INVALID: 403,
    Code.TOPIC_TOKEN_EXPIRED: 403,
    Code.PUBLISH_FORBIDDEN: 403,
    Code.PUBLICATION_TOO_LARGE: 413,
    Code.PRESENCE_DISABLED: 404,
    Code.TOPIC_UNAVAILABLE: 503,
}


class TopicRefused(AppError):
    """A topic operation refused; `code` is a `TopicErrorCode`, `details.topic` the topic."""

    def __init__(self, code: Code, message: str, topic: object = None) -> None:
        super().__init__(message, code=code.value, details={"topic": topic})
        self.status = _STATUS.get(code, 400)  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Grant:
    """A permission to subscribe: to what, under which rules, until when (a token's `exp`;
    None: as long as the connection)."""

    topic: Topic
    namespace: Namespace
    expires_at: float | None


class Topics:
    """The deployment's namespaces over one `TopicStore`."""

    def __init__(self, settings: Settings, store: TopicStore, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.store = store
        self.namespaces = Namespaces(settings.namespaces())
        self._verifier = verifier

    def resolve(self, raw: object) -> tuple[Topic, Namespace]:
        try:
            return self.namespaces.resolve(raw)
        except TopicError as exc:
            raise TopicRefused(Code(exc.code), str(exc), raw) from None

    async def authorize(self, raw: object, user_id: UUID, token: str | None) -> Grant:
        """May `user_id` subscribe to (or see the presence of) `raw`? Raises `TopicRefused`."""
        topic, namespace = self.resolve(raw)
        name = str(topic)
        if namespace.subscribe == "owner":
            if topic.name != str(user_id):
                raise TopicRefused(Code.SUBSCRIBE_FORBIDDEN, "only its owner may subscribe", name)
            return Grant(topic, namespace, None)
        if namespace.subscribe == "authenticated":
            return Grant(topic, namespace, None)
        if not token:
            raise TopicRefused(Code.TOPIC_TOKEN_REQUIRED, "this topic needs a token", name)
        return Grant(topic, namespace, await self.check_token(name, token, user_id))

    async def check_token(self, topic: str, token: str, user_id: UUID) -> float:
        """A subscription token's `exp`; raises `TopicRefused`."""
        try:
            return await self._verifier.verify_subscription(token, topic, user_id)
        except TokenError as exc:
            code = Code.TOPIC_TOKEN_EXPIRED if exc.reason == "token expired" else None
            raise TopicRefused(code or Code.TOPIC_TOKEN_INVALID, exc.reason, topic) from None

    def encode_data(self, topic: str, data: object) -> bytes:
        """The publication's data as JSON; raises `TopicRefused` when over the size limit."""
        encoded = data if isinstance(data, bytes) else msgspec.json.encode(data)
        limit = self.settings.topic_max_publication_bytes
        if len(encoded) > limit:
            raise TopicRefused(
                Code.PUBLICATION_TOO_LARGE, f"publication data over {limit} bytes", topic
            )
        return encoded

    async def publish(
        self, raw: object, data: object, idempotency_key: str | None = None
    ) -> tuple[Position, bool]:
        """Publish from a service (no per-user rule applies). Raises `TopicRefused`,
        `redis.RedisError`."""
        topic, namespace = self.resolve(raw)
        encoded = self.encode_data(str(topic), data)
        return await self.store.publish(
            str(topic), namespace, encoded, now=time.time(), idempotency_key=idempotency_key
        )

    async def presence(self, topic: Topic, namespace: Namespace) -> PresenceAnswer:
        """The topic's presence, at most `TOPIC_MAX_PRESENCE` entries listed."""
        if not namespace.presence:
            raise TopicRefused(
                Code.PRESENCE_DISABLED, "this namespace keeps no presence", str(topic)
            )
        clients = await self.store.presence(str(topic), now_ms=int(time.time() * 1000))
        limit = self.settings.topic_max_presence
        return PresenceAnswer(
            topic=str(topic),
            clients=clients[:limit],
            users=len({c.user_id for c in clients}),
            total=len(clients),
            truncated=len(clients) > limit,
        )


def presence_stats(clients: list[ClientInfo]) -> tuple[int, int]:
    """(connections, distinct users)."""
    return len(clients), len({c.user_id for c in clients})
