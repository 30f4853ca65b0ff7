"""Client of notifications_svc's replay endpoint: a user's notifications after a given `seq`.

Items come back as the exact frames that were published; they are forwarded as received (each
item's raw JSON), never re-encoded. Contract: docs/internal-api.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import msgspec

from gateway.upstream import Upstream, UpstreamError
from shared.http import internal_headers

# Larger than any real sequence number: asks only for the user's current `last_seq`.
LATEST = 2**62


class _Seq(msgspec.Struct):
    seq: int


class _Item(msgspec.Struct):
    data: _Seq


class _Page(msgspec.Struct):
    items: list[msgspec.Raw]
    has_more: bool
    last_seq: int


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_item = msgspec.json.Decoder(_Item).decode


@dataclass(frozen=True, slots=True)
class Page:
    frames: list[tuple[int, str]]  # (seq, frame JSON) in ascending seq
    has_more: bool
    last_seq: int


class ReplayError(Exception):
    """notifications_svc could not answer (down, timed out, or a malformed answer)."""


class ReplayClient:
    def __init__(self, http: Upstream, internal_token: str, page_size: int = 500) -> None:
        self._http = http
        self._headers = internal_headers(internal_token)
        self._page_size = page_size

    async def page(self, user_id: UUID, after_seq: int) -> Page:
        """One page of the user's notifications with `seq > after_seq`; raises `ReplayError`."""
        try:
            response = await self._http.get(
                f"/internal/v1/users/{user_id}/notifications/replay",
                params={"after_seq": after_seq, "limit": self._page_size},
                headers=self._headers,
            )
        except UpstreamError as exc:
            raise ReplayError(f"notifications service unreachable: {exc!r}") from None
        if response.status_code != 200:
            raise ReplayError(f"notifications service answered {response.status_code}")
        try:
            page = _decode_page(response.content)
            frames = [(_decode_item(item).data.seq, bytes(item).decode()) for item in page.items]
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ReplayError(f"malformed replay answer: {exc}") from None
        return Page(frames=frames, has_more=page.has_more, last_seq=page.last_seq)
