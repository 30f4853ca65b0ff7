"""Signing keys from a JWKS URL, fetched without ever blocking the event loop.

PyJWT's `PyJWKClient` fetches with a blocking `urllib` call (30 s timeout) on the caller's
thread: from an async handler, a hung key server froze every request of the process, and a token
with an unknown `kid` triggered a fetch every time. `JwksKeys` instead:

- fetches with an async HTTP client under one deadline (`fetch_timeout`), one fetch at a time
  (concurrent callers share it); a caller that waits for a fetch holds only itself up;
- refreshes the key set in the background at 80 % of its lifetime (the key server's
  `Cache-Control: max-age`, clamped to [30 s, 1 h], else `DEFAULT_LIFETIME`), so requests never wait
  for a routine refresh. While the key server cannot answer, the last good key set stays in use
  (an identity-provider outage must not log everyone out) and the failure is logged;
- answers a `kid` it does not know by fetching at most once per `min_fetch_interval` (unknown
  `kid`s cannot make it hammer the key server), and remembers a `kid` that a fetch did not bring
  (`unknown_kid_ttl`, at most `UNKNOWN_KID_MAX` of them) so it is refused at once after that. A
  fetch that brings a new key set forgets those refusals: a key rotated in is found.

Contract: `key()` raises `KeyLookupError` whose `reason` is "token signing key unknown" or "token
signing keys unavailable"; `aclose()` is idempotent and stops the refresher. One instance per
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 300.0  # seconds a key set is fresh when the key server says nothing
MIN_LIFETIME, MAX_LIFETIME = 30.0, 3600.0  # clamp of the key server's max-age
FETCH_TIMEOUT = 5.0  # seconds one fetch may take, response body included
MIN_FETCH_INTERVAL = 30.0  # at most one fetch per this many seconds on account of unknown kids
UNKNOWN_KID_TTL = 300.0  # seconds a kid missing from a fresh key set is refused without a fetch
UNKNOWN_KID_MAX = 1000
MAX_JWKS_BYTES = 512 * 1024

_MAX_AGE = re.compile(r"max-age=(\d+)")


class JwksError(Exception):
    """The key server could not give a usable key set (unreachable, slow, not a JWKS)."""


class KeyLookupError(Exception):
    """No key to verify the token with; `reason` is fit for a client (never holds the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksKeys:
    """The signing keys of one JWKS URL, by `kid`."""

    def __init__(
        self,
        url: str,
        *,
        fetch_timeout: float = FETCH_TIMEOUT,
        min_fetch_interval: float = MIN_FETCH_INTERVAL,
        unknown_kid_ttl: float = UNKNOWN_KID_TTL,
        min_lifetime: float = MIN_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._fetch_timeout = fetch_timeout
        self._min_fetch_interval = min_fetch_interval
        self._unknown_kid_ttl = unknown_kid_ttl
        self._min_lifetime = min_lifetime
        self._clock = clock
        self._keys: dict[str | None, Any] | None = None
        self._lifetime = DEFAULT_LIFETIME
        self._unknown: dict[str | None, float] = {}  # kid -> refused without a fetch until
        self._last_fetch = float("-inf")  # clock() when the last fetch started
        self._fetching: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.fetches = 0  # fetches started (for metrics and tests)
        self.updated = asyncio.Event()  # set after every successful fetch (tests wait on it)

    async def key(self, kid: str | None) -> Any:
        """The verification key named `kid`; `TokenError` if there is none (see module doc)."""
        if self._keys is None:
            try:
                await self._fetch()
            except JwksError:
                raise KeyLookupError("token signing keys unavailable") from None
        assert self._keys is not None
        found = self._keys.get(kid)
        if found is not None:
            return found
        now = self._clock()
        until = self._unknown.get(kid)
        if until is not None and now < until:
            raise KeyLookupError("token signing key unknown")
        if now - self._last_fetch >= self._min_fetch_interval or self._fetching is not None:
            with contextlib.suppress(JwksError):
                await self._fetch()
            found = self._keys.get(kid)
            if found is not None:
                return found
            self._remember_unknown(kid, self._clock())
        raise KeyLookupError("token signing key unknown")

    async def aclose(self) -> None:
        """Stop the background refresher and any fetch; close the HTTP client. Idempotent."""
        for task in (self._refresher, self._fetching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._fetching = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _remember_unknown(self, kid: str | None, now: float) -> None:
        if len(self._unknown) >= UNKNOWN_KID_MAX:
            self._unknown.pop(next(iter(self._unknown)), None)  # the oldest
        self._unknown[kid] = now + self._unknown_kid_ttl

    async def _fetch(self) -> None:
        """Fetch the key set, or join the fetch already running; raises `JwksError`."""
        if self._fetching is None:
            self._last_fetch = self._clock()
            self.fetches += 1
            self._fetching = asyncio.create_task(self._download(), name="jwks-fetch")
            self._fetching.add_done_callback(self._fetched)
        # Shielded: a caller that gives up (client gone) must not cancel everyone's fetch.
        await asyncio.shield(self._fetching)
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")

    def _fetched(self, task: asyncio.Task[None]) -> None:
        if self._fetching is task:
            self._fetching = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("JWKS fetch failed", extra={"error": str(task.exception())})

    async def _download(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            # One deadline for the whole exchange: httpx's timeouts are per read, so a key
            # server dribbling bytes would otherwise hold the fetch open indefinitely.
            async with asyncio.timeout(self._fetch_timeout):
                response = await self._client.get(self._url, headers={"accept": "application/json"})
        except (TimeoutError, httpx.HTTPError) as exc:
            raise JwksError(f"JWKS fetch failed: {exc!r}") from None
        if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
            raise JwksError(f"JWKS fetch answered {response.status_code}")
        try:
            keys = jwt.PyJWKSet.from_json(response.text).keys
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
            raise JwksError(f"JWKS unusable: {exc}") from None
        fresh: dict[str | None, Any] = {key.key_id: key.key for key in keys}
        if self._keys is None or fresh.keys() != self._keys.keys():
            self._unknown.clear()  # a kid refused before may have been rotated in
        self._keys = fresh
        self._lifetime = self._lifetime_of(response.headers.get("cache-control", ""))
        self.updated.set()

    async def _refresh_loop(self) -> None:
        """Refresh before the key set goes stale; on failure retry sooner, keep the old keys."""
        delay = 0.8 * self._lifetime
        while True:
            await asyncio.sleep(delay)
            try:
                await self._fetch()
            except JwksError:
                delay = min(self._min_lifetime, 0.8 * self._lifetime)
            else:
                delay = 0.8 * self._lifetime

    def _lifetime_of(self, cache_control: str) -> float:
        match = _MAX_AGE.search(cache_control)
        if match is None:
            return max(self._min_lifetime, DEFAULT_LIFETIME)
        return min(MAX_LIFETIME, max(self._min_lifetime, float(match.group(1))))
