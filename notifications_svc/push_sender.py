"""The Web Push sender: a background task of every notifications_svc instance.

It leases due jobs from `notifications.push_jobs` (`push_store.claim`, SKIP LOCKED: instances
share the work and never send the same job at once) and sends each in its own task, at most
`PUSH_CONCURRENCY` at a time, each request bounded by `PUSH_TIMEOUT`: a push service that hangs
holds one slot for one timeout, never the loop or other users' pushes.

After each attempt (`webpush.classify`):
- accepted (2xx): the job is deleted;
- 404/410: the subscription is deleted, and with it every pending job for it;
- 429, 5xx, timeout, connection error: retried at `Retry-After` when the service sent one, else
  after the `shared.backoff` delay (full jitter, 5 s doubling to 1 h); after `PUSH_MAX_ATTEMPTS`
  attempts the job is dead-lettered (`dead_at` set, kept with `last_error` for inspection);
- any other 4xx: dead-lettered at once (the same request cannot succeed).

Delivery is at-least-once. A job is leased by moving `next_attempt_at` to `now + lease` before
the request; a sender killed mid-send (or whose settling write fails) leaves it to be sent again
when the lease ends. The push may then reach the browser twice, with the same notification id in
its payload, which the service worker uses to drop the second one.

Time comes from an injectable clock (epoch seconds), so tests move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg
import httpx
from prometheus_client import Counter, Histogram

from notifications_svc import push_store, webpush
from shared import db
from shared.backoff import Backoff
from shared.settings import Settings
from shared.vapid import VapidKeys

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks for due jobs (others' instances, retries)
BACKOFF_BASE = 5.0
BACKOFF_MAX = 3600.0
MAX_RETRY_AFTER = 86400.0  # a Retry-After beyond a day is taken as a day

SENT = Counter("notifications_push_sent_total", "Pushes accepted by a push service")
FAILED = Counter(
    "notifications_push_failed_total", "Push attempts that failed (retried or dead-lettered)"
)
GONE = Counter("notifications_push_gone_total", "Subscriptions deleted after a 404 or 410")
DEAD_LETTERED = Counter("notifications_push_dead_lettered_total", "Pushes given up on")
LATENCY = Histogram(
    "notifications_push_latency_seconds",
    "Seconds from a notification's creation to its push being accepted",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
REQUEST_SECONDS = Histogram(
    "notifications_push_request_seconds", "Duration of one request to a push service"
)

Clock = Callable[[], float]


def backoff_delay(attempts: int) -> float:
    """The delay after the `attempts`-th failed attempt without Retry-After (full jitter)."""
    backoff = Backoff(base=BACKOFF_BASE, maximum=BACKOFF_MAX, minimum=1.0)
    backoff.attempt = max(0, attempts - 1)
    return backoff.next_delay()


class PushSender:
    """Sends due pushes; `run` is its loop (cancel to stop: in-flight sends are cancelled and
    their jobs come back when their lease ends)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        clock: Clock = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._keys = VapidKeys(settings.vapid_private_key, settings.vapid_public_key)
        self._clock = clock
        self._http = http
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.lease = 2 * settings.push_timeout + 1

    def wake(self) -> None:
        """Look for due jobs now (new jobs committed, or the test clock moved)."""
        self._wake.set()

    async def run(self) -> None:
        own_client = self._http is None
        http = self._http or httpx.AsyncClient(
            timeout=self._settings.push_timeout, follow_redirects=False, trust_env=False
        )
        backoff = Backoff(base=0.2, maximum=5.0)
        try:
            while True:
                try:
                    claimed = await self.dispatch(http)
                except (asyncpg.PostgresError, *db.UNAVAILABLE) as exc:
                    log.warning("push: postgres unavailable", extra={"error": repr(exc)})
                    await backoff.sleep()
                    continue
                except Exception:
                    # The sender is what makes pushes durable: it must outlive any surprise.
                    log.exception("push: unexpected error")
                    await backoff.sleep()
                    continue
                backoff.reset()
                if claimed:
                    continue  # there may be more due: fill the free slots first
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            for task in self._inflight:
                task.cancel()
            for task in list(self._inflight):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if own_client:
                await http.aclose()

    async def dispatch(self, http: httpx.AsyncClient) -> int:
        """Lease as many due jobs as there are free slots and start sending them; returns how
        many were leased."""
        free = self._settings.push_concurrency - len(self._inflight)
        if free <= 0:
            return 0
        now = self._clock()
        jobs = await push_store.claim(self._pool, now, now + self.lease, free)
        for job in jobs:
            task = asyncio.create_task(self._send(http, job), name=f"push-{job.id}")
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return len(jobs)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free

    async def idle(self) -> None:
        """Wait until no send is in flight (tests)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def _send(self, http: httpx.AsyncClient, job: push_store.Job) -> None:
        try:
            outcome = await self._attempt(http, job)
            await self._settle(job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The job's lease runs out and it is tried again; nothing is lost.
            log.exception("push: unexpected error", extra={"job": job.id})

    async def _attempt(self, http: httpx.AsyncClient, job: push_store.Job) -> webpush.Outcome:
        settings = self._settings
        subscription = webpush.Subscription(job.endpoint, job.p256dh, job.auth)
        body = webpush.payload(job.notification_id, job.title, job.content, job.type, job.action)
        request = webpush.build_request(
            subscription,
            body,
            keys=self._keys,
            subject=settings.vapid_subject,
            ttl=settings.push_ttl,
            urgency=settings.push_urgency,
            topic_name=webpush.topic(job.type),
            now=self._clock(),
        )
        started = time.perf_counter()
        try:
            answer = await http.post(request.url, content=request.body, headers=request.headers)
        except httpx.TimeoutException:
            return webpush.Outcome("retry", "timed out")
        except httpx.HTTPError as exc:
            return webpush.Outcome("retry", f"request failed: {type(exc).__name__}")
        finally:
            REQUEST_SECONDS.observe(time.perf_counter() - started)
        return webpush.classify(
            answer.status_code, answer.headers.get("retry-after"), self._clock()
        )

    async def _settle(self, job: push_store.Job, outcome: webpush.Outcome) -> None:
        now = self._clock()
        extra = {"job": job.id, "subscription": str(job.subscription_id), "reason": outcome.reason}
        if outcome.verdict == "sent":
            await push_store.done(self._pool, job.id)
            SENT.inc()
            LATENCY.observe(max(0.0, now - job.created_at.timestamp()))
            return
        if outcome.verdict == "gone":
            await push_store.forget_subscription(self._pool, job.subscription_id)
            GONE.inc()
            log.info("push subscription gone, deleted", extra=extra)
            return
        FAILED.inc()
        if outcome.verdict == "reject" or job.attempts >= self._settings.push_max_attempts:
            await push_store.dead(self._pool, job.id, now, outcome.reason)
            DEAD_LETTERED.inc()
            log.warning("push dead-lettered", extra=extra | {"attempts": job.attempts})
            return
        if outcome.retry_after is not None:
            delay = min(outcome.retry_after, MAX_RETRY_AFTER)
        else:
            delay = backoff_delay(job.attempts)
        await push_store.reschedule(self._pool, job.id, now + delay, outcome.reason)
        log.info("push failed, retrying", extra=extra | {"attempts": job.attempts, "in": delay})
