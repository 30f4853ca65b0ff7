"""Telling a user's connected clients that their notifications changed: marked read, all marked
read, deleted. Whoever made the change (another tab, another device, the REST API, the agent's
tools), every open inbox updates its list and badge live.

Announcements are best effort, after the response is sent (a Starlette background task): the
change is committed either way, and a failed announcement only costs clients a live update (they
recount on their next reconnect). Never raises.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal
from uuid import UUID

from starlette.background import BackgroundTask
from starlette.requests import Request

from notifications_svc import store
from shared import publish
from shared.wire import NotificationsChanged, NotificationsChangedData

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT = 2.0  # seconds; an announcement later than this is no longer "live"

Change = Literal["read", "all_read", "deleted"]


async def announce(request: Request, user_id: UUID, change: Change, ids: list[str]) -> None:
    """Publish a `notifications_changed` frame with the user's new unread count."""
    state = request.app.state
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT):
            unread = await store.unread_count(state.pool, user_id)
            frame = NotificationsChanged(NotificationsChangedData(change, ids, unread))
            await publish.to_user(state.redis, user_id, frame)
    except Exception as exc:  # best effort: the change itself is committed
        log.warning("notifications_changed not announced for %s: %r", user_id, exc)


def after_response(
    request: Request, user_id: UUID, change: Change, ids: list[str]
) -> BackgroundTask:
    """`announce` as a background task for the response of the change."""
    return BackgroundTask(announce, request, user_id, change, ids)
