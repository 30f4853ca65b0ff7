"""Client of notifications_svc's replay: a user's notifications after a given `seq`, asked for
many users in one call.

Every resume (`?last_seq=`) and every fresh connection whose seq baseline Redis does not know asks
for one page; in a reconnect storm that is thousands of pages a second, and one HTTP call and
transaction each cost notifications_svc and this gateway more than the rows. So the pages asked
for at the same time are group-committed (`gateway.batch.GroupCommit`): whatever is waiting when
the previous call returns goes into the next `POST /internal/v1/notifications/replay`, at most
`MAX_ASKS` asks a call (a larger batch is split into calls made at once).

Items come back as the exact frames that were published; they are forwarded as received (each
item's raw JSON), never re-encoded. Contract: docs/internal-api.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec

from gateway import metrics
from gateway.batch import GroupCommit
from gateway.upstream import Response, Upstream, UpstreamError, UpstreamTimeout
from shared.http import internal_headers

# Larger than any real sequence number: asks only for the user's current `last_seq`.
LATEST = 2**62
MAX_ASKS = 200  # per call (the service takes up to 500)
# The limits of one call's asks add up to at most this (the service takes up to 20,000): a
# page per ask is smaller in a large batch, and a user with more asks again (`has_more`).
ROWS_PER_CALL = 10_000
_PATH = "/internal/v1/notifications/replay"


class _Ask(msgspec.Struct):
    user_id: UUID
    after_seq: int
    limit: int


class _Asks(msgspec.Struct):
    asks: list[_Ask]


class _Seq(msgspec.Struct):
    seq: int


class _Item(msgspec.Struct):
    data: _Seq


class _Page(msgspec.Struct):
    items: list[msgspec.Raw]
    has_more: bool
    last_seq: int


class _Pages(msgspec.Struct):
    pages: list[_Page]


_encode = msgspec.json.Encoder().encode
_decode_pages = msgspec.json.Decoder(_Pages).decode
_decode_item = msgspec.json.Decoder(_Item).decode


@dataclass(frozen=True, slots=True)
class Page:
    frames: list[tuple[int, str]]  # (seq, frame JSON) in ascending seq
    has_more: bool
    last_seq: int


class ReplayError(Exception):
    """notifications_svc could not answer (down, timed out, or a malformed answer)."""


class ReplayClient:
    """`spawn` runs the batches' calls in the background (the owner's, which cancels them on
    stop)."""

    def __init__(
        self,
        http: Upstream,
        internal_token: str,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        page_size: int = 500,
    ) -> None:
        self._http = http
        self._headers = internal_headers(internal_token) | {"content-type": "application/json"}
        self._page_size = page_size
        self._batches: GroupCommit[tuple[UUID, int], Page | ReplayError] = GroupCommit(
            self._run, spawn
        )

    async def page(self, user_id: UUID, after_seq: int) -> Page:
        """One page of the user's notifications with `seq > after_seq`, fetched in one call with
        the pages other connections ask for meanwhile; raises `ReplayError` (each asker of a
        failed call). Cancelling the caller does not cancel the call."""
        metrics.REPLAY_ASKS.inc()
        result = await self._batches.submit((user_id, after_seq))
        if isinstance(result, ReplayError):
            raise ReplayError(str(result))
        return result

    async def _run(self, asks: list[tuple[UUID, int]]) -> list[Page | ReplayError]:
        calls = [asks[i : i + MAX_ASKS] for i in range(0, len(asks), MAX_ASKS)]
        answers = await asyncio.gather(*(self._call(call) for call in calls))
        return [result for answer in answers for result in answer]

    async def _call(self, asks: list[tuple[UUID, int]]) -> Sequence[Page | ReplayError]:
        try:
            return await self._pages(asks)
        except ReplayError as exc:
            return [exc] * len(asks)

    async def _pages(self, asks: list[tuple[UUID, int]]) -> list[Page]:
        """One call: a page per `(user_id, after_seq)`, in order; raises `ReplayError`."""
        metrics.REPLAY_CALLS.inc()
        limit = max(1, min(self._page_size, ROWS_PER_CALL // len(asks)))
        response = await self._post(_encode(_Asks([_Ask(u, after, limit) for u, after in asks])))
        if response.status_code != 200:
            raise ReplayError(f"notifications service answered {response.status_code}")
        try:
            pages = _decode_pages(response.content).pages
            frames = [
                [(_decode_item(item).data.seq, bytes(item).decode()) for item in page.items]
                for page in pages
            ]
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ReplayError(f"malformed replay answer: {exc}") from None
        if len(pages) != len(asks):
            raise ReplayError(f"expected {len(asks)} replay pages, got {len(pages)}")
        return [
            Page(frames=f, has_more=page.has_more, last_seq=page.last_seq)
            for f, page in zip(frames, pages, strict=True)
        ]

    async def _post(self, body: bytes) -> Response:
        try:
            try:
                return await self._http.request("POST", _PATH, content=body, headers=self._headers)
            except UpstreamTimeout:
                raise
            except UpstreamError:
                # The pool retries only idempotent methods on a kept-alive connection the
                # service had closed meanwhile; this POST only reads, so it is sent once more.
                return await self._http.request("POST", _PATH, content=body, headers=self._headers)
        except UpstreamError as exc:
            raise ReplayError(f"notifications service unreachable: {exc!r}") from None
