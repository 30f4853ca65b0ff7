"""Notification wire shapes: the create request, the stored row, the REST item and the frame.

Pure code, no I/O. A stored row renders to exactly one `notification` frame, built from the row
alone (its `timestamp` is the creation time), so the frame published live and the frame replayed
later are byte-identical apart from `is_read`, which is the row's current state.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec

from shared.errors import ValidationFailed
from shared.wire import Notification as NotificationFrame
from shared.wire import NotificationData, encode

Title = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
TypeName = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
EntityType = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
DedupeKey = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]

MAX_PAGE_SIZE = 100
MAX_SEQ = 2**63 - 1  # bigint
MAX_PAGE = 100_000  # deeper than this: follow `next_cursor` (offsets that deep are slow)


class CreateNotification(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A create request (HTTP body, batch item or ingest stream payload), the model's names.

    Retries: a producer whose create timed out or failed without an answer must retry with the
    same idempotency key (`dedupe_key`, or the `Idempotency-Key` header of
    `POST /internal/v1/notifications`): the create may have committed, and the repeat then answers
    200 with the first notification instead of creating a second one. Without a key a retry may
    create a duplicate.
    """

    user_id: UUID
    title: Title
    content: str
    type: TypeName
    action: dict[str, Any] | None = None
    related_entity_type: EntityType | None = None
    related_entity_id: UUID | None = None
    dedupe_key: DedupeKey | None = None
    send_push: bool = True


class _Columns(msgspec.Struct, frozen=True):
    """The columns a stored row and its REST item share, by name and type (timestamps differ:
    `datetime` in the row, the seed's ISO text in the item)."""

    id: UUID
    user_id: UUID
    seq: int
    title: str
    content: str
    type: str
    action: dict[str, Any] | None
    related_entity_type: str | None
    related_entity_id: UUID | None
    is_read: bool


_SHARED = _Columns.__struct_fields__


class Stored(_Columns, frozen=True):
    """One row of `notifications.notifications` as the service reads it."""

    read_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Stored:
        return cls(**{name: record[name] for name in cls.__struct_fields__})


COLUMNS = ", ".join(Stored.__struct_fields__)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# REST bodies. They are what the handlers encode and what the OpenAPI document is generated
# from (shared.contract), so the two cannot drift apart. Timestamps stay `str` (the seed's
# `isoformat()` form with `+00:00`; msgspec would write a `Z`).


class NotificationItem(_Columns, frozen=True):
    """A notification in the REST API: the seed's model fields (`type`, not
    `notification_type`) plus `seq`."""

    read_at: str | None
    created_at: str
    updated_at: str


class NotificationPage(msgspec.Struct):
    """`GET /api/v1/notifications`: one page, newest first; `next_cursor` continues it."""

    items: list[NotificationItem]
    total: int
    page: int
    page_size: int
    has_more: bool
    next_cursor: str | None


class MarkedRead(msgspec.Struct):
    marked_read: int


class UnreadCount(msgspec.Struct):
    unread_count: int


class ListQuery(msgspec.Struct, kw_only=True):
    """The query string of `GET /api/v1/notifications` (parsed by `parse_*` below, which
    answer 422 naming the parameter)."""

    page: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = 1
    page_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE_SIZE)] = 20
    unread_only: bool = False
    notification_type: TypeName | None = None
    cursor: Annotated[
        str | None, msgspec.Meta(description="`next_cursor` of the previous page (keyset paging)")
    ] = None


class NotificationPath(msgspec.Struct):
    notification_id: UUID


def item(row: Stored) -> NotificationItem:
    """The REST representation of a stored row."""
    return NotificationItem(
        **{name: getattr(row, name) for name in _SHARED},
        read_at=_iso(row.read_at),
        created_at=row.created_at.isoformat(),
        updated_at=row.updated_at.isoformat(),
    )


def frame(row: Stored) -> NotificationFrame:
    """The seed's `notification` frame for this row, with `data.seq`."""
    created_at = row.created_at.isoformat()
    return NotificationFrame(
        data=NotificationData(
            id=str(row.id),
            title=row.title,
            content=row.content,
            notification_type=row.type,
            action=row.action,
            created_at=created_at,
            related_entity_type=row.related_entity_type,
            related_entity_id=None if row.related_entity_id is None else str(row.related_entity_id),
            is_read=row.is_read,
            seq=row.seq,
        ),
        timestamp=created_at,
    )


def frame_bytes(row: Stored) -> bytes:
    return encode(frame(row))


# Keyset cursor: opaque to clients, the seq of the last item of the previous page.

_CURSOR_PREFIX = "s:"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The seq a cursor stands for; `ValidationFailed` for anything not made by `encode_cursor`."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationFailed("cursor is not valid", details={"cursor": cursor}) from None
    digits = text.removeprefix(_CURSOR_PREFIX)
    valid = text.startswith(_CURSOR_PREFIX) and digits.isascii() and digits.isdigit()
    if not valid or int(digits) > MAX_SEQ:
        raise ValidationFailed("cursor is not valid", details={"cursor": cursor})
    return int(digits)


# Query-string parsing: every bad value is a 422 naming the parameter.

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def parse_uuid(value: str, name: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be a UUID", details={"field": name, "value": value}
        ) from None


def parse_int(value: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ValidationFailed(
            f"{name} must be an integer from {low} to {high}",
            details={"field": name, "value": value},
        )
    return number


def parse_bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValidationFailed(f"{name} must be true or false", details={"field": name, "value": value})


def parse_type(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 50 or "\x00" in value:
        raise ValidationFailed(
            "notification_type must be 1 to 50 characters, without NUL",
            details={"field": "notification_type", "value": value[:60]},
        )
    return value
