"""Chat over the gateway: the seam between the WebSocket connection loop and the agent.

The connection loop (gateway) hands every client frame whose `type` is in `CHAT_FRAME_TYPES` to
`handle_ws_frame` as raw bytes; this module decodes it with its own types and answers through
`ChatContext.send` (the connection's bounded send path). Until the agent pipeline lands (issue 4),
chat frames are answered with an `error` frame `CHAT_UNAVAILABLE`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from shared.wire import error_frame

CHAT_FRAME_TYPES: frozenset[str] = frozenset({"message"})


@dataclass(frozen=True, slots=True)
class ChatContext:
    """What chat needs to know about the connection a frame came from."""

    app_state: Any  # the gateway app's `app.state` (settings, redis, http clients)
    user_id: UUID
    session_id: UUID
    connection_id: str
    send: Callable[[bytes], Awaitable[None]]


async def handle_ws_frame(ctx: ChatContext, raw: bytes) -> None:
    await ctx.send(error_frame("CHAT_UNAVAILABLE", "chat is not available on this gateway yet"))
