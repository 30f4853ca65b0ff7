"""Built-in tools, all acting through our own services for the user the answer belongs to.

- `notify_user`: a notification now (notifications_svc internal API) or at a given time (the
  scheduled set in Redis, delivered by `agent_svc.scheduler`);
- `list_notifications`, `count_unread_notifications`, `mark_notifications_read`: the user's
  notifications through notifications_svc's user API mounted for internal callers
  (`/internal/v1/users/<user>/notifications...`): the same handlers and ownership checks as the
  user's own requests, the user named by the path, whatever the JWT algorithm;
- `current_time`.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import msgspec

from agent_svc.tools import ToolContext, ToolError, ToolRegistry
from shared import keys
from shared.http import internal_headers

NOTIFICATION_TYPE = "agent_message"
REMINDER_TYPE = "reminder"
_MAX_DELAY = 366 * 24 * 3600


class NotifyParams(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=255, description="Short title")]
    content: Annotated[str, msgspec.Meta(max_length=4000, description="The notification text")]
    at: (
        Annotated[
            datetime,
            msgspec.Meta(description="When to deliver it (ISO 8601 with offset); omit for now"),
        ]
        | None
    ) = None
    delay_seconds: (
        Annotated[
            float, msgspec.Meta(ge=0, le=_MAX_DELAY, description="Deliver after this many seconds")
        ]
        | None
    ) = None


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    unread_only: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class MarkReadParams(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[
        list[uuid.UUID], msgspec.Meta(max_length=100, description="Notification ids to mark")
    ] = []
    all: Annotated[bool, msgspec.Meta(description="Mark every unread notification read")] = False


class TimeParams(msgspec.Struct, forbid_unknown_fields=True):
    timezone: Annotated[str, msgspec.Meta(description="IANA zone, e.g. Europe/Paris")] = "UTC"


class ScheduledNotification(msgspec.Struct, frozen=True):
    """A member of the scheduled set: the internal create body plus a unique id."""

    id: str
    user_id: str
    title: str
    content: str
    type: str
    related_entity_type: str
    related_entity_id: str
    attempts: int = 0


def create_body(item: ScheduledNotification, dedupe_key: str) -> dict[str, Any]:
    """The notifications_svc internal create body (docs/notifications.md). `dedupe_key` makes
    a repeated create (a reclaimed answer, a retried delivery) return the first notification."""
    return {
        "dedupe_key": dedupe_key,
        "user_id": item.user_id,
        "title": item.title,
        "content": item.content,
        "type": item.type,
        "action": None,
        "related_entity_type": item.related_entity_type,
        "related_entity_id": item.related_entity_id,
    }


async def post_notification(
    http: httpx.AsyncClient, settings_url: str, internal_token: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Create a notification through notifications_svc; raises `ToolError` on any failure."""
    try:
        response = await http.post(
            f"{settings_url}/internal/v1/notifications",
            json=body,
            headers=internal_headers(internal_token),
        )
    except httpx.HTTPError as exc:
        raise ToolError(f"notifications service unreachable: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise ToolError(f"notifications service answered {response.status_code}")
    created: dict[str, Any] = response.json()
    return created


def _due_time(params: NotifyParams) -> float | None:
    if params.at is not None and params.delay_seconds is not None:
        raise ToolError("give either `at` or `delay_seconds`, not both")
    if params.delay_seconds is not None:
        return time.time() + params.delay_seconds if params.delay_seconds > 0 else None
    if params.at is not None:
        if params.at.tzinfo is None:
            raise ToolError("`at` needs a UTC offset, e.g. 2026-01-01T09:00:00+00:00")
        due = params.at.timestamp()
        if due > time.time() + _MAX_DELAY:
            raise ToolError("`at` is more than a year away")
        return due if due > time.time() else None
    return None


# The per-user cap on scheduled notifications (`AGENT_MAX_REMINDERS_PER_USER`): ids by due time;
# the scheduler removes each once delivered or dropped, and entries a day past due (a delivery
# that never reported back) stop counting.
_COUNT_REMINDER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2]) + 86400))
return 1
"""
_STALE_REMINDER = 86400.0


async def notify_user(ctx: ToolContext, params: NotifyParams) -> dict[str, Any]:
    item = ScheduledNotification(
        id=str(uuid.uuid4()),
        user_id=str(ctx.user_id),
        title=params.title,
        content=params.content,
        type=NOTIFICATION_TYPE,
        related_entity_type="chat_message",
        related_entity_id=str(ctx.message_id),
    )
    due = _due_time(params)
    if due is None:
        body = create_body(item, f"agent:{ctx.message_id}:{ctx.call_id or item.id}")
        created = await post_notification(
            ctx.http, ctx.settings.notifications_url, ctx.settings.internal_token, body
        )
        return {"status": "sent", "notification_id": created.get("id")}
    scheduled = msgspec.structs.replace(item, type=REMINDER_TYPE)
    limit = ctx.settings.agent_max_reminders_per_user
    counted = await ctx.redis.eval(
        _COUNT_REMINDER,
        1,
        keys.agent_user_reminders(ctx.user_id),
        time.time() - _STALE_REMINDER,
        limit,
        due,
        item.id,
    )
    if not counted:
        raise ToolError(
            f"REMINDER_LIMIT: the user already has {limit} scheduled notifications; "
            "one must be delivered before another can be scheduled"
        )
    await ctx.redis.zadd(keys.AGENT_SCHEDULED_NOTIFICATIONS, {msgspec.json.encode(scheduled): due})
    return {"status": "scheduled", "deliver_at": datetime.fromtimestamp(due, UTC).isoformat()}


async def _user_api(
    ctx: ToolContext, method: str, path: str, params: dict[str, Any] | None = None
) -> Any:
    base = f"{ctx.settings.notifications_url}/internal/v1/users/{ctx.user_id}/notifications"
    try:
        response = await ctx.http.request(
            method,
            base + path,
            params=params,
            headers=internal_headers(ctx.settings.internal_token),
        )
    except httpx.HTTPError as exc:
        raise ToolError(f"notifications service unreachable: {type(exc).__name__}") from None
    if response.status_code == 404:
        raise ToolError("notification not found")
    if response.status_code >= 300:
        raise ToolError(f"notifications service answered {response.status_code}")
    return response.json() if response.content else {}


_LISTED_FIELDS = ("id", "title", "content", "type", "is_read", "created_at")


async def list_notifications(ctx: ToolContext, params: ListParams) -> Any:
    query = {"page": 1, "page_size": params.limit, "unread_only": str(params.unread_only).lower()}
    page = await _user_api(ctx, "GET", "", query)
    items = [{k: item.get(k) for k in _LISTED_FIELDS} for item in page.get("items", [])]
    return {"total": page.get("total"), "items": items}


async def count_unread(ctx: ToolContext, params: NoParams) -> Any:
    return await _user_api(ctx, "GET", "/unread/count")


async def mark_read(ctx: ToolContext, params: MarkReadParams) -> Any:
    if params.all:
        return await _user_api(ctx, "POST", "/read-all")
    if not params.ids:
        raise ToolError("give `ids` or set `all`")
    marked = [await _user_api(ctx, "PATCH", f"/{nid}/read") for nid in params.ids]
    return {"marked": len(marked)}


async def current_time(ctx: ToolContext, params: TimeParams) -> dict[str, str]:
    try:
        zone = ZoneInfo(params.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {params.timezone!r}") from None
    now = datetime.now(zone)
    return {"now": now.isoformat(), "timezone": params.timezone, "weekday": now.strftime("%A")}


def register(registry: ToolRegistry) -> None:
    """Add the built-in tools to `registry`."""
    registry.tool(
        "notify_user",
        "Send the user a notification now, or schedule it with `at` or `delay_seconds` "
        "(a reminder).",
        NotifyParams,
    )(notify_user)
    registry.tool(
        "list_notifications",
        "List the user's notifications, newest first (unread only by default).",
        ListParams,
    )(list_notifications)
    registry.tool("count_unread_notifications", "Count the user's unread notifications.", NoParams)(
        count_unread
    )
    registry.tool(
        "mark_notifications_read",
        "Mark some of the user's notifications (by id) or all of them as read.",
        MarkReadParams,
    )(mark_read)
    registry.tool("current_time", "The current date and time in a time zone.", TimeParams)(
        current_time
    )
