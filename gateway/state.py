"""The gateway's shared state, typed: what the lifespan builds once and every part reads.

It replaces an untyped `app.state` handed around as `Any`. The lifespan also keeps the same
objects as `app.state` attributes, where request handlers read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.upstream import Upstream
from shared.auth import TokenVerifier
from shared.quotas import TokenBucket
from shared.redis_client import RedisClient
from shared.settings import Settings

if TYPE_CHECKING:  # gateway.chat builds on this module's type
    from gateway.chat import ChatQuotas
    from gateway.replies import ReplyReader


@dataclass(frozen=True, slots=True)
class GatewayState:
    """Built by the lifespan, alive as long as the app; nothing here is per connection."""

    settings: Settings
    redis: RedisClient
    upstreams: dict[str, Upstream]  # "notifications", "agent"
    verifier: TokenVerifier
    chat_quotas: ChatQuotas
    user_requests: TokenBucket  # per-user request bucket of the REST facade and chat
    replies: ReplyReader | None = None  # chat's shared reply reader; None on Redis Cluster
