"""The `notifications:ingest` Redis stream consumer: producers create notifications without HTTP.

Entry format (see docs/notifications.md): one field `payload` holding the JSON body of
`POST /internal/v1/notifications`. Entries are read through the consumer group
`notifications_svc`, so every instance shares the work and each entry is handled by one of them.

Contract: an entry is acknowledged only after its notification committed (at-least-once); a
redelivered entry creates nothing new, because each entry is deduplicated by its producer's
`dedupe_key` or, failing that, by its own stream id. An entry that can never succeed (not JSON,
wrong fields, a value PostgreSQL refuses) is copied to `notifications:ingest:dead` with the reason
and acknowledged in one transaction, so it neither blocks the stream nor disappears. So is an entry
that failed `MAX_ATTEMPTS` times in a row with an unexpected error (a bug, a trigger refusing it):
entries are handled in stream order, so without the cap one such entry would hold back every
later one forever. Outages (Redis or PostgreSQL unreachable, a serialization failure or deadlock)
are not counted: those entries wait for the dependency, however long. Entries left pending by a
crashed consumer are claimed after `CLAIM_IDLE_MS` by a live one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
import msgspec
from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError

from notifications_svc import store
from notifications_svc.outbox import Outbox
from notifications_svc.push_policy import PushPlanner
from notifications_svc.wire import CreateNotification
from shared import consumer_group, db, keys
from shared.backoff import Backoff
from shared.errors import ValidationFailed
from shared.redis_client import RedisClient, is_cluster

log = logging.getLogger(__name__)

PAYLOAD_FIELD = b"payload"
CLAIM_IDLE_MS = 60_000  # an entry pending this long belongs to a consumer presumed dead
_CLAIM_EVERY = 15.0  # seconds between XAUTOCLAIM sweeps
_READ_COUNT = 50
_BLOCK_MS = 2_000  # below the client's socket timeout, so a quiet stream is not an error
_DEAD_MAXLEN = 100_000
MAX_ATTEMPTS = 5  # unexpected failures in a row before an entry is dead-lettered

# Failures that say nothing about the entry: retried without counting.
_OUTAGES: tuple[type[BaseException], ...] = (
    RedisError,
    *db.UNAVAILABLE,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)

INGESTED = Counter("notifications_ingested_total", "Ingest stream entries turned into rows")
DEAD_LETTERED = Counter("notifications_dead_lettered_total", "Ingest entries moved to dead letter")

Entry = tuple[bytes, dict[bytes, bytes]]


class InvalidEntry(Exception):
    """The entry can never become a notification; the message is the dead-letter reason."""


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes], max_bytes: int) -> CreateNotification:
    """The create request an entry carries, its dedupe key defaulting to the entry id.

    A payload over `max_bytes` is refused like an HTTP body over the limit. Raises
    `InvalidEntry` naming what is wrong. Pure.
    """
    payload = fields.get(PAYLOAD_FIELD)
    if payload is None:
        raise InvalidEntry("missing field 'payload'")
    if len(payload) > max_bytes:
        raise InvalidEntry(f"payload over {max_bytes} bytes")
    try:
        request = msgspec.json.decode(payload, type=CreateNotification)
    except msgspec.ValidationError as exc:
        raise InvalidEntry(f"invalid notification: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidEntry(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidEntry("payload is not valid JSON: nested too deeply") from None
    if request.dedupe_key is None:
        request = msgspec.structs.replace(request, dedupe_key=f"ingest:{entry_id.decode()}")
    return request


class IngestConsumer:
    """One consumer of the group; `run` is its background loop (cancel to stop)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: RedisClient,
        outbox: Outbox,
        max_payload_bytes: int,
        planner: PushPlanner | None = None,
    ) -> None:
        self._pool = pool
        self._planner = planner
        self._max_payload_bytes = max_payload_bytes
        self._redis = client
        self._outbox = outbox
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self._group_ready = False
        # Re-read our own pending entries (id "0") after any failure: they were delivered to us
        # but not acknowledged, and ">" will never show them again.
        self._pending = True
        self._next_claim = 0.0
        # Unexpected failures in a row per entry id; an entry is here only while it keeps failing
        # (handled in order, so at most a batch of entries at once).
        self._failures: dict[bytes, int] = {}

    async def run(self) -> None:
        backoff = Backoff(base=0.2, maximum=5.0)
        while True:
            try:
                await self._step()
            except ResponseError as exc:
                # NOGROUP: the stream or group vanished (Redis restarted without its data).
                self._group_ready, self._pending = False, True
                if not consumer_group.is_nogroup(exc):
                    log.error("ingest: redis refused a command", extra={"error": repr(exc)})
                    await backoff.sleep()
            except RedisError as exc:
                log.warning("ingest: redis unreachable", extra={"error": repr(exc)})
                self._group_ready, self._pending = False, True
                await backoff.sleep()
            except _OUTAGES as exc:
                log.warning("ingest: postgres unavailable", extra={"error": repr(exc)})
                self._pending = True
                await backoff.sleep()
            except Exception:
                # Ingestion must outlive any surprise; the entry stays pending and is retried
                # (up to MAX_ATTEMPTS times, then dead-lettered).
                log.exception("ingest: unexpected error")
                self._pending = True
                await backoff.sleep()
            else:
                backoff.reset()

    async def _step(self) -> None:
        if not self._group_ready:
            await self._ensure_group()
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + _CLAIM_EVERY
            await self._claim_stale()
            # Consumers of processes that stopped (a name per process) would pile up otherwise.
            await consumer_group.prune_consumers(
                self._redis, keys.NOTIFICATIONS_INGEST_STREAM, keys.NOTIFICATIONS_INGEST_GROUP
            )
        if self._pending:
            entries = await self._read("0", block=None)
            if not entries:
                self._pending = False
        else:
            entries = await self._read(">", block=_BLOCK_MS)
        await self._handle_all(entries)

    async def _ensure_group(self) -> None:
        await consumer_group.ensure_group(
            self._redis, keys.NOTIFICATIONS_INGEST_STREAM, keys.NOTIFICATIONS_INGEST_GROUP
        )
        self._group_ready = True

    async def _read(self, start: str, block: int | None) -> list[Entry]:
        # redis-py types the reply loosely: [[stream, [(id, fields), ...]], ...] or None.
        response: Any = await self._redis.xreadgroup(
            keys.NOTIFICATIONS_INGEST_GROUP,
            self.name,
            {keys.NOTIFICATIONS_INGEST_STREAM: start},
            count=_READ_COUNT,
            block=block,
        )
        return [entry for _, entries in response or [] for entry in entries]

    async def _claim_stale(self) -> None:
        start = "0-0"
        while True:
            next_start, entries, *_ = await self._redis.xautoclaim(
                keys.NOTIFICATIONS_INGEST_STREAM,
                keys.NOTIFICATIONS_INGEST_GROUP,
                self.name,
                min_idle_time=CLAIM_IDLE_MS,
                start_id=start,
                count=_READ_COUNT,
            )
            await self._handle_all(entries)
            start = next_start.decode() if isinstance(next_start, bytes) else str(next_start)
            if start == "0-0":
                return

    async def _handle_all(self, entries: Iterable[Entry]) -> None:
        for entry_id, fields in entries:
            if fields:  # a claimed entry trimmed from the stream comes back without fields
                await self._handle(entry_id, fields)
            else:
                await self._ack(entry_id)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            request = parse_entry(entry_id, fields, self._max_payload_bytes)
            created = await store.create(self._pool, request, planner=self._planner)
        except (InvalidEntry, ValidationFailed) as exc:
            await self._dead_letter(entry_id, fields, str(exc))
            return
        except _OUTAGES:
            raise
        except Exception as exc:
            attempts = self._failures.get(entry_id, 0) + 1
            if attempts < MAX_ATTEMPTS:
                self._failures[entry_id] = attempts
                raise
            self._failures.pop(entry_id, None)
            await self._dead_letter(entry_id, fields, f"failed {attempts} times: {exc!r}")
            return
        self._failures.pop(entry_id, None)
        if created.created:
            INGESTED.inc()
            await self._outbox.after_commit(request.user_id)
        await self._ack(entry_id)

    async def _ack(self, entry_id: bytes) -> None:
        await self._redis.xack(
            keys.NOTIFICATIONS_INGEST_STREAM, keys.NOTIFICATIONS_INGEST_GROUP, entry_id
        )

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        dead = {**fields, b"dead_reason": reason.encode(), b"dead_source_id": entry_id}
        # One MULTI/EXEC here; in a Redis Cluster the two streams live in different slots, so the
        # acknowledgement follows the dead letter (a crash in between dead-letters it twice).
        split = is_cluster(self._redis)
        async with self._redis.pipeline(transaction=not split) as pipe:
            pipe.xadd(
                keys.NOTIFICATIONS_DEAD_LETTER_STREAM,
                dead,  # type: ignore[arg-type]  # redis-py's stub wants str keys; bytes work
                maxlen=_DEAD_MAXLEN,
                approximate=True,
            )
            if not split:
                pipe.xack(
                    keys.NOTIFICATIONS_INGEST_STREAM, keys.NOTIFICATIONS_INGEST_GROUP, entry_id
                )
            await pipe.execute()
        if split:
            await self._ack(entry_id)
        DEAD_LETTERED.inc()
        log.warning(
            "ingest entry dead-lettered",
            extra={"entry_id": entry_id.decode(), "reason": reason[:200]},
        )
