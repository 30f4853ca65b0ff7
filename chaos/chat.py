"""Streaming answers during a chaos run: askers that resume, and answers checked token by token.

An `Asker` is one chat user holding one session: it asks a question over `POST
/api/v1/chat/stream` through nginx, reads the SSE answer, and when the stream drops (or ends
without `end`) resumes the same answer with `GET /api/v1/chat/stream/{message_id}` and
`Last-Event-ID` until the answer's `end` or `error`, then asks the next question. A POST refused
with `CHAT_BUSY` adopts the running answer the refusal names (a POST that died before its
`start` arrived). Every `token` is recorded with its event id; an event id not above the last
one seen counts as a repeat. After the run `check` compares each answer's concatenated tokens
with the reply the agent persisted in the session's history: any difference is a gap or a repeat
inside the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from shared.backoff import Backoff

QUESTION = (
    "chaos run question: please keep streaming this answer while the gateways, Redis, "
    "PostgreSQL and the workers are being killed and paused one after another, and make sure "
    "every word arrives exactly once and in order"
)


def _event_key(event_id: str) -> tuple[int, int]:
    millis, _, seq = event_id.partition("-")
    return int(millis), int(seq or 0)


@dataclass
class Answer:
    step: int  # the step it was asked in
    asked_at: float  # monotonic
    message_id: str | None = None
    tokens: list[str] = field(default_factory=list)
    last_event_id: str | None = None
    repeats: int = 0  # events whose id was not above the last one seen
    resumes: int = 0  # GETs with Last-Event-ID after a drop
    longest_silence: float = 0.0  # seconds between two consecutive events
    status: str = "streaming"  # then: complete, cancelled, error
    finished_at: float | None = None
    persisted: str | None = None  # the reply as stored in the history (set by `check`)
    _last_event_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def matches(self) -> bool:
        """The concatenated tokens are the persisted reply, with no repeated event."""
        return self.persisted is not None and self.persisted == self.text and not self.repeats

    def take(self, event: dict[str, object], now: float) -> None:
        """Record one SSE event (pure apart from the clock passed in)."""
        event_id = event.get("event_id")
        if isinstance(event_id, str):
            if self.last_event_id is not None and _event_key(event_id) <= _event_key(
                self.last_event_id
            ):
                self.repeats += 1
                return
            self.last_event_id = event_id
        if self._last_event_at is not None:
            self.longest_silence = max(self.longest_silence, now - self._last_event_at)
        self._last_event_at = now
        kind = event.get("type")
        if kind == "start" and isinstance(event.get("message_id"), str):
            self.message_id = str(event["message_id"])
        elif kind == "token":
            self.tokens.append(str(event.get("content", "")))
        elif kind == "end":
            self.status = str(event.get("status", "complete"))
            self.finished_at = now
        elif kind == "error":
            self.status = "error"
            self.finished_at = now


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, object]]:
    """The JSON of each `data:` line; an `id:` line's id is put in as `event_id` if missing."""
    event_id: str | None = None
    async for line in response.aiter_lines():
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            event = json.loads(line[5:])
            if isinstance(event, dict):
                if event_id is not None:
                    event.setdefault("event_id", event_id)
                yield event
            event_id = None


@dataclass
class Asker:
    base_url: str  # nginx
    token: str
    source: str  # local address the asker's connections come from
    step: int = 0  # set by the run
    session_id: str | None = None
    answers: list[Answer] = field(default_factory=list)
    errors: dict[int, Counter[str]] = field(default_factory=dict)  # step -> "503", "drop", ...
    stopping: bool = False  # set by the run: finish the current answer, ask no more
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set once stopped

    def _error(self, kind: str) -> None:
        self.errors.setdefault(self.step, Counter())[kind] += 1

    async def _read(self, response: httpx.Response, answer: Answer) -> None:
        async for event in _events(response):
            answer.take(event, time.monotonic())
            if event.get("type") == "start" and isinstance(event.get("session_id"), str):
                self.session_id = str(event["session_id"])
            if answer.finished_at is not None:
                return

    async def _ask(self, http: httpx.AsyncClient, answer: Answer) -> None:
        """POST the question until an answer exists (its `start` read, or a CHAT_BUSY naming it)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        body: dict[str, str] = {"message": QUESTION}
        if self.session_id:
            body["session_id"] = self.session_id
        backoff = Backoff(base=0.2, maximum=2.0)
        while answer.message_id is None:
            try:
                async with http.stream(
                    "POST", "/api/v1/chat/stream", json=body, headers=headers
                ) as response:
                    if response.status_code == 200:
                        await self._read(response, answer)
                    else:
                        await response.aread()
                        self._error(str(response.status_code))
                        error = response.json().get("error", {}) if response.content else {}
                        running = (error.get("details") or {}).get("message_id")
                        if error.get("code") == "CHAT_BUSY" and running:
                            answer.message_id = running
                            return
            except (httpx.TransportError, json.JSONDecodeError) as exc:
                self._error(type(exc).__name__)
            if answer.message_id is None:
                await backoff.sleep()

    async def _resume(self, http: httpx.AsyncClient, answer: Answer) -> None:
        """GET the answer after its last event until it finished."""
        backoff = Backoff(base=0.2, maximum=2.0)
        while answer.finished_at is None:
            answer.resumes += 1
            headers = {"Authorization": f"Bearer {self.token}"}
            if answer.last_event_id:
                headers["Last-Event-ID"] = answer.last_event_id
            try:
                async with http.stream(
                    "GET", f"/api/v1/chat/stream/{answer.message_id}", headers=headers
                ) as response:
                    if response.status_code == 200:
                        await self._read(response, answer)
                    else:
                        await response.aread()
                        self._error(f"resume {response.status_code}")
            except httpx.TransportError as exc:
                self._error(type(exc).__name__)
            if answer.finished_at is None:
                await backoff.sleep()

    async def run(self) -> None:
        """Ask, read, resume, ask again, until cancelled."""
        transport = httpx.AsyncHTTPTransport(local_address=self.source)
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(
            base_url=self.base_url, transport=transport, timeout=timeout
        ) as http:
            while not self.stopping:
                answer = Answer(self.step, time.monotonic())
                self.answers.append(answer)
                await self._ask(http, answer)
                if answer.finished_at is None:
                    self._error("drop")
                    await self._resume(http, answer)
        self.idle.set()

    async def check(self, base_url: str) -> None:
        """Fill each answer's `persisted` reply from the session's history (after the run)."""
        if self.session_id is None:
            return
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            response = await http.get(
                f"/api/v1/sessions/{self.session_id}/messages",
                params={"limit": 500},
                headers={"Authorization": f"Bearer {self.token}"},
            )
            response.raise_for_status()
            body = response.json()
        items = body["items"] if isinstance(body, dict) else body
        stored = {str(item["id"]): item["content"] for item in items if item["role"] == "assistant"}
        for answer in self.answers:
            if answer.message_id is not None:
                answer.persisted = stored.get(answer.message_id)
