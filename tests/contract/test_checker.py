"""The suite's contract checker catches what it must: undocumented statuses, fields and frame
types; and lets through what the contract allows (documented answers, frames a test published)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.support.contract import Checker, ContractViolation


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


def _check(checker: Checker, method: str, path: str, status: int, body: object) -> None:
    request = httpx.Request(method, "http://127.0.0.1:1" + path)
    response = httpx.Response(status, json=body, request=request)
    expected = checker.expected(request, response)
    assert expected is not None
    checker.check_body(request, response, *expected)


def test_documented_answer_passes(checker: Checker) -> None:
    _check(checker, "GET", "/api/v1/notifications/unread/count", 200, {"unread_count": 3})
    unauthorized = {"error": {"code": "UNAUTHORIZED", "message": "no token", "details": None}}
    _check(checker, "GET", "/api/v1/sessions", 401, unauthorized)


@pytest.mark.parametrize(
    ("status", "body", "why"),
    [
        (500, {"error": {"code": "INTERNAL_ERROR", "message": "x", "details": None}}, "status"),
        (200, {"unread_count": 3, "leaked": "x"}, "Additional properties"),
        (200, {"unread_count": "3"}, "is not of type"),
        (200, {}, "required"),
    ],
    ids=["status", "field", "type", "missing"],
)
def test_off_contract_answer_fails(checker: Checker, status: int, body: object, why: str) -> None:
    with pytest.raises(ContractViolation, match=why):
        _check(checker, "GET", "/api/v1/notifications/unread/count", status, body)


def test_paths_outside_the_contract_are_not_judged(checker: Checker) -> None:
    request = httpx.Request("GET", "http://127.0.0.1:1/metrics")
    assert checker.expected(request, httpx.Response(200, request=request)) is None
    outside = httpx.Request("PUT", "http://127.0.0.1:1/api/v1/notifications")
    assert checker.expected(outside, httpx.Response(405, request=outside)) is None


def test_frames(checker: Checker) -> None:
    checker.check_frame(json.dumps({"type": "pong", "timestamp": "2025-01-01T00:00:00+00:00"}))
    with pytest.raises(ContractViolation, match="undocumented server frame type"):
        checker.check_frame('{"type": "teleported"}')
    with pytest.raises(ContractViolation, match="Additional properties"):
        checker.check_frame('{"type": "pong", "timestamp": "t", "secret": 1}')
    published = {"type": "announcement", "text": str(uuid.uuid4())}
    checker.record_publish(b'{"seq":1}\n' + json.dumps(published).encode())
    checker.check_frame(json.dumps(published))


def test_sse_events_are_checked(checker: Checker) -> None:
    request = httpx.Request("POST", "http://127.0.0.1:1/api/v1/chat/stream")
    good = b'data: {"event_id":"1-0","type":"token","content":"hi"}\n\n: keep-alive\n\n'
    response = httpx.Response(200, content=good, request=request,
                              headers={"content-type": "text/event-stream"})  # fmt: skip
    document, answer = checker.expected(request, response) or pytest.fail("not matched")
    sse = checker.sse_events("chat", document, answer["content"]["text/event-stream"]["schema"])
    sse.feed(good)
    with pytest.raises(ContractViolation):
        sse.feed(b'data: {"event_id":"1-1","type":"token"}\n\n')
