"""Delivery of notifications the agent scheduled for later (`notify_user` with a time).

Scheduled items live in one Redis sorted set scored by due time, so they survive agent restarts
and any number of agent processes can poll it: an item belongs to whoever removes it (`ZREM`
returns 1 to exactly one caller). A failed delivery is put back a little later, at most
`MAX_ATTEMPTS` times. Delivery is at-most-once per attempt: a process killed between `ZREM` and
the HTTP call loses that one item (logged on every failure path we can see).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import msgspec
import redis.asyncio as redis

from agent_svc.builtin_tools import ScheduledNotification, create_body, post_notification
from agent_svc.tools import ToolError
from shared import keys
from shared.settings import Settings

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
RETRY_DELAY = 30.0
MAX_ATTEMPTS = 10
_decode = msgspec.json.Decoder(ScheduledNotification).decode


async def deliver_due(
    client: redis.Redis, http: httpx.AsyncClient, settings: Settings, now: float, batch: int = 50
) -> int:
    """Deliver every item due at `now` (up to `batch`); returns how many were delivered."""
    delivered = 0
    members: list[bytes] = await client.zrangebyscore(  # type: ignore[assignment]
        keys.AGENT_SCHEDULED_NOTIFICATIONS, "-inf", now, start=0, num=batch
    )
    for member in members:
        if await client.zrem(keys.AGENT_SCHEDULED_NOTIFICATIONS, member) != 1:
            continue  # another agent process took it
        try:
            item = _decode(member)
        except msgspec.DecodeError:
            log.error("dropping malformed scheduled notification")
            continue
        try:
            await post_notification(
                http, settings.notifications_url, settings.internal_token, create_body(item)
            )
        except ToolError as exc:
            await _retry_later(client, item, now, str(exc))
            continue
        delivered += 1
    return delivered


async def _retry_later(
    client: redis.Redis, item: ScheduledNotification, now: float, reason: str
) -> None:
    attempts = item.attempts + 1
    if attempts >= MAX_ATTEMPTS:
        log.error("scheduled notification dropped", extra={"id": item.id, "reason": reason})
        return
    log.warning("scheduled notification delayed", extra={"id": item.id, "reason": reason})
    again = msgspec.structs.replace(item, attempts=attempts)
    await client.zadd(
        keys.AGENT_SCHEDULED_NOTIFICATIONS, {msgspec.json.encode(again): now + RETRY_DELAY}
    )


async def run(client: redis.Redis, http: httpx.AsyncClient, settings: Settings) -> None:
    """Poll for due items until cancelled; a Redis hiccup is logged and retried next tick."""
    while True:
        try:
            await deliver_due(client, http, settings, time.time())
        except (redis.RedisError, OSError) as exc:
            log.warning("scheduler poll failed", extra={"error": repr(exc)})
        await asyncio.sleep(POLL_INTERVAL)
