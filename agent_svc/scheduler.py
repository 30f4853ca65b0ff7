"""Delivery of notifications the agent scheduled for later (`notify_user` with a time).

Scheduled items live in one Redis sorted set scored by due time, so they survive agent restarts
and every agent process polls it. Delivery is at-least-once and idempotent, hence exactly once:
an item is created with the dedupe key `agent-reminder:{id}` and removed from the set only after
notifications_svc accepted it, so a crash in between, or two processes delivering the same item,
creates one notification. A failed delivery is moved `RETRY_DELAY` later, at most `MAX_ATTEMPTS`
times, by whichever process removes the item (`ZREM` returns 1 to exactly one of them).
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
from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
RETRY_DELAY = 30.0
MAX_ATTEMPTS = 10
_decode = msgspec.json.Decoder(ScheduledNotification).decode


def dedupe_key(item: ScheduledNotification) -> str:
    return f"agent-reminder:{item.id}"


async def deliver_due(
    client: RedisClient, http: httpx.AsyncClient, settings: Settings, now: float, batch: int = 50
) -> int:
    """Deliver every item due at `now` (up to `batch`); returns how many were delivered."""
    delivered = 0
    members: list[bytes] = await client.zrangebyscore(  # type: ignore[assignment]
        keys.AGENT_SCHEDULED_NOTIFICATIONS, "-inf", now, start=0, num=batch
    )
    for member in members:
        try:
            item = _decode(member)
        except msgspec.DecodeError:
            log.error("dropping malformed scheduled notification")
            await client.zrem(keys.AGENT_SCHEDULED_NOTIFICATIONS, member)
            continue
        try:
            await post_notification(
                http,
                settings.notifications_url,
                settings.internal_token,
                create_body(item, dedupe_key(item)),
            )
        except ToolError as exc:
            if await client.zrem(keys.AGENT_SCHEDULED_NOTIFICATIONS, member) == 1:
                await _retry_later(client, item, now, str(exc))
            continue
        await client.zrem(keys.AGENT_SCHEDULED_NOTIFICATIONS, member)
        await client.zrem(keys.agent_user_reminders(item.user_id), item.id)
        delivered += 1
    return delivered


async def _retry_later(
    client: RedisClient, item: ScheduledNotification, now: float, reason: str
) -> None:
    attempts = item.attempts + 1
    if attempts >= MAX_ATTEMPTS:
        log.error("scheduled notification dropped", extra={"id": item.id, "reason": reason})
        await client.zrem(keys.agent_user_reminders(item.user_id), item.id)
        return
    log.warning("scheduled notification delayed", extra={"id": item.id, "reason": reason})
    again = msgspec.structs.replace(item, attempts=attempts)
    await client.zadd(
        keys.AGENT_SCHEDULED_NOTIFICATIONS, {msgspec.json.encode(again): now + RETRY_DELAY}
    )


async def run(client: RedisClient, http: httpx.AsyncClient, settings: Settings) -> None:
    """Poll for due items until cancelled; a Redis hiccup is logged and retried next tick."""
    while True:
        try:
            await deliver_due(client, http, settings, time.time())
        except (redis.RedisError, OSError) as exc:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # see worker.raise_if_cancelling
            log.warning("scheduler poll failed", extra={"error": repr(exc)})
        await asyncio.sleep(POLL_INTERVAL)
