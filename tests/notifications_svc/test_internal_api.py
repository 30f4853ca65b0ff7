"""Internal API endpoints: create (idempotent, ordered, validated), batch, replay (of one user or
of many at once)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest

from notifications_svc import store
from notifications_svc.internal_api import fit
from notifications_svc.wire import Stored, frame_bytes
from tests.notifications_svc.conftest import INTERNAL, create, payload

Auth = Callable[[uuid.UUID], dict[str, str]]


async def test_create_returns_201_with_seq(http: httpx.AsyncClient) -> None:
    """A create answers 201 with the stored notification; a user's seqs start at 1."""
    user = uuid.uuid4()
    body = payload(user)
    created = await create(http, user, **body)
    assert created["seq"] == 1
    assert uuid.UUID(created["id"])
    for field in ("title", "content", "type", "action", "related_entity_type"):
        assert created[field] == body[field]
    assert created["related_entity_id"] == body["related_entity_id"]
    assert created["is_read"] is False
    assert (await create(http, user))["seq"] == 2


async def test_optional_fields_may_be_omitted(http: httpx.AsyncClient) -> None:
    """action and the related entity are optional (null)."""
    user = uuid.uuid4()
    response = await http.post(
        "/internal/v1/notifications",
        json={"user_id": str(user), "title": "t", "content": "", "type": "system"},
        headers=INTERNAL,
    )
    assert response.status_code == 201
    body = response.json()
    assert body["action"] is None
    assert body["related_entity_id"] is None


async def test_idempotency_key_header(http: httpx.AsyncClient) -> None:
    """A retry with the same Idempotency-Key answers 200 with the same notification, once."""
    user = uuid.uuid4()
    headers = INTERNAL | {"Idempotency-Key": "retry-1"}
    first = await http.post("/internal/v1/notifications", json=payload(user), headers=headers)
    second = await http.post("/internal/v1/notifications", json=payload(user), headers=headers)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json() == first.json()
    other_user = await http.post(
        "/internal/v1/notifications", json=payload(uuid.uuid4()), headers=headers
    )
    assert other_user.status_code == 201, "keys are scoped per user"


async def test_dedupe_key_concurrent_retries(http: httpx.AsyncClient) -> None:
    """Ten concurrent creates with one dedupe_key store one notification and use one seq."""
    user = uuid.uuid4()
    body = payload(user, dedupe_key="task-7-due")
    responses = await asyncio.gather(
        *(http.post("/internal/v1/notifications", json=body, headers=INTERNAL) for _ in range(10))
    )
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert (await create(http, user))["seq"] == 2


async def test_header_and_dedupe_key_must_agree(http: httpx.AsyncClient) -> None:
    """An Idempotency-Key differing from the body's dedupe_key is a 422."""
    response = await http.post(
        "/internal/v1/notifications",
        json=payload(uuid.uuid4(), dedupe_key="a"),
        headers=INTERNAL | {"Idempotency-Key": "b"},
    )
    assert response.status_code == 422


async def test_fifty_concurrent_creates_get_seq_1_to_50(http: httpx.AsyncClient) -> None:
    """50 concurrent creates for one user get seqs 1..50, no gap, no duplicate."""
    user = uuid.uuid4()
    responses = await asyncio.gather(
        *(
            http.post("/internal/v1/notifications", json=payload(user), headers=INTERNAL)
            for _ in range(50)
        )
    )
    assert all(r.status_code == 201 for r in responses)
    assert sorted(r.json()["seq"] for r in responses) == list(range(1, 51))


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"title": "x" * 256}, 422),
        ({"title": ""}, 422),
        ({"title": 5}, 422),
        ({"user_id": "not-a-uuid"}, 422),
        ({"type": None}, 422),
        ({"type": "t" * 51}, 422),
        ({"action": "not-an-object"}, 422),
        ({"related_entity_id": 12}, 422),
        ({"send_push": "yes"}, 422),
        ({"unknown_field": 1}, 422),
        ({"content": "nul \u0000 byte"}, 422),
    ],
)
async def test_bad_fields_are_422(
    http: httpx.AsyncClient, change: dict[str, Any], status: int
) -> None:
    """Wrong types, a title over 255 characters, unknown fields or values PostgreSQL refuses are
    a 422 JSON error, never a 500."""
    response = await http.post(
        "/internal/v1/notifications", json=payload(uuid.uuid4()) | change, headers=INTERNAL
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_title_of_255_is_accepted(http: httpx.AsyncClient) -> None:
    """The longest allowed title is 255 characters."""
    user = uuid.uuid4()
    assert (await create(http, user, title="é" * 255))["title"] == "é" * 255


async def test_missing_field_is_422(http: httpx.AsyncClient) -> None:
    """A body without a required field is a 422 naming it."""
    body = payload(uuid.uuid4())
    del body["title"]
    response = await http.post("/internal/v1/notifications", json=body, headers=INTERNAL)
    assert response.status_code == 422
    assert "title" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b'{"user_id": ', b'{"action": {"a": ' + b"[" * 60_000],
    ids=["malformed", "empty", "truncated", "deep"],  # deep: was a RecursionError, a 500
)
async def test_malformed_json_is_400(http: httpx.AsyncClient, raw: bytes) -> None:
    """A body that is not JSON answers 400 INVALID_JSON."""
    response = await http.post(
        "/internal/v1/notifications",
        content=raw,
        headers=INTERNAL | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_JSON"


async def test_body_over_limit_is_413(http: httpx.AsyncClient) -> None:
    """A body over HTTP_MAX_BODY_BYTES (64 KiB by default) answers 413, declared or streamed."""
    body = payload(uuid.uuid4(), content="x" * 70_000)
    response = await http.post("/internal/v1/notifications", json=body, headers=INTERNAL)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 4096

    streamed = await http.post(
        "/internal/v1/notifications",
        content=chunks(),
        headers=INTERNAL | {"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/internal/v1/notifications"),
        ("POST", "/internal/v1/notifications/batch"),
        ("GET", f"/internal/v1/users/{uuid.uuid4()}/notifications/replay"),
        ("POST", "/internal/v1/notifications/replay"),
    ],
)
async def test_internal_token_required(
    http: httpx.AsyncClient, auth: Auth, method: str, path: str
) -> None:
    """Internal API endpoints refuse no token, a wrong one and a user's JWT with 401."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, auth(uuid.uuid4())):
        response = await http.request(method, path, json=payload(uuid.uuid4()), headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHORIZED"


async def test_batch_creates_for_many_users(http: httpx.AsyncClient) -> None:
    """A batch creates one notification per item in request order, and a retried batch creates
    nothing new (200) thanks to per-item dedupe keys."""
    users = [uuid.uuid4() for _ in range(5)]
    items = [payload(u, title=f"for {n}", dedupe_key="broadcast-1") for n, u in enumerate(users)]
    items.append(payload(users[0], title="second for 0"))
    response = await http.post(
        "/internal/v1/notifications/batch", json={"notifications": items}, headers=INTERNAL
    )
    assert response.status_code == 201
    results = response.json()["items"]
    assert [r["created"] for r in results] == [True] * 6
    assert [r["notification"]["title"] for r in results] == [i["title"] for i in items]
    assert [r["notification"]["seq"] for r in results] == [1, 1, 1, 1, 1, 2]

    retry = await http.post(
        "/internal/v1/notifications/batch", json={"notifications": items[:5]}, headers=INTERNAL
    )
    assert retry.status_code == 200
    assert [r["created"] for r in retry.json()["items"]] == [False] * 5
    assert [r["notification"] for r in retry.json()["items"]] == [
        r["notification"] for r in results[:5]
    ]


async def test_batch_is_all_or_none(http: httpx.AsyncClient, auth: Auth) -> None:
    """One invalid item rejects the whole batch: nothing is created."""
    user = uuid.uuid4()
    items = [payload(user), payload(user, title="x" * 256)]
    response = await http.post(
        "/internal/v1/notifications/batch", json={"notifications": items}, headers=INTERNAL
    )
    assert response.status_code == 422
    listed = await http.get("/api/v1/notifications", headers=auth(user))
    assert listed.json()["total"] == 0
    empty = await http.post(
        "/internal/v1/notifications/batch", json={"notifications": []}, headers=INTERNAL
    )
    assert empty.status_code == 422
    keyed = await http.post(
        "/internal/v1/notifications/batch",
        json={"notifications": [payload(user)]},
        headers=INTERNAL | {"Idempotency-Key": "k"},
    )
    assert keyed.status_code == 422, "a batch-wide key would be silently ignored"
    assert (await http.get("/api/v1/notifications", headers=auth(user))).json()["total"] == 0


async def test_replay_after_seq(http: httpx.AsyncClient, auth: Auth) -> None:
    """Replay returns the frames with seq > N ascending, bounded, with has_more and last_seq;
    deleted and push-less notifications are skipped, and last_seq still counts them."""
    user = uuid.uuid4()
    made = [await create(http, user, title=f"n{n}") for n in range(5)]
    await create(http, user, title="quiet", send_push=False)
    await http.delete(f"/api/v1/notifications/{made[2]['id']}", headers=auth(user))
    url = f"/internal/v1/users/{user}/notifications/replay"

    page = (await http.get(url, params={"after_seq": 1, "limit": 2}, headers=INTERNAL)).json()
    assert [i["data"]["seq"] for i in page["items"]] == [2, 4]
    assert page["has_more"] is True
    assert page["last_seq"] == 6
    frame = page["items"][0]
    assert frame["type"] == "notification"
    assert frame["timestamp"] == frame["data"]["created_at"]
    assert frame["data"] | {"seq": 0} == {
        "id": made[1]["id"],
        "title": "n1",
        "content": made[1]["content"],
        "notification_type": "task_created",
        "action": made[1]["action"],
        "created_at": made[1]["created_at"],
        "related_entity_type": "task",
        "related_entity_id": made[1]["related_entity_id"],
        "is_read": False,
        "seq": 0,
    }

    rest = (await http.get(url, params={"after_seq": 4}, headers=INTERNAL)).json()
    assert [i["data"]["seq"] for i in rest["items"]] == [5]
    assert rest["has_more"] is False

    nobody = (
        await http.get(f"/internal/v1/users/{uuid.uuid4()}/notifications/replay", headers=INTERNAL)
    ).json()
    assert nobody == {"items": [], "has_more": False, "last_seq": 0}


@pytest.mark.parametrize(
    "params", [{"after_seq": "-1"}, {"after_seq": "x"}, {"limit": "0"}, {"limit": "1001"}]
)
async def test_replay_bad_query_is_422(http: httpx.AsyncClient, params: dict[str, str]) -> None:
    """Replay rejects a negative or non-integer after_seq and a limit outside 1..1000."""
    response = await http.get(
        f"/internal/v1/users/{uuid.uuid4()}/notifications/replay", params=params, headers=INTERNAL
    )
    assert response.status_code == 422


async def test_replay_malformed_user_is_422(http: httpx.AsyncClient) -> None:
    """A user id that is not a UUID is a 422."""
    response = await http.get("/internal/v1/users/nope/notifications/replay", headers=INTERNAL)
    assert response.status_code == 422


async def replay_pages(http: httpx.AsyncClient, asks: list[dict[str, Any]]) -> list[Any]:
    response = await http.post(
        "/internal/v1/notifications/replay", json={"asks": asks}, headers=INTERNAL
    )
    assert response.status_code == 200, response.text
    pages: list[Any] = response.json()["pages"]
    return pages


async def single_page(http: httpx.AsyncClient, ask: dict[str, Any]) -> Any:
    """What the single-user replay answers for the same ask."""
    params = {k: v for k, v in ask.items() if k != "user_id"}
    url = f"/internal/v1/users/{ask['user_id']}/notifications/replay"
    return (await http.get(url, params=params, headers=INTERNAL)).json()


async def test_batch_replay_answers_each_ask_in_order(http: httpx.AsyncClient, auth: Auth) -> None:
    """The batch replay answers one page per ask, in ask order, each exactly what the single-user
    replay answers for it: gaps of deleted and push-less notifications skipped, `has_more` at the
    ask's limit, `last_seq` counting every seq, a user asked twice answered twice, a user
    without notifications an empty page with `last_seq` 0."""
    gappy, plain, nobody = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    made = [await create(http, gappy, title=f"n{n}") for n in range(5)]
    await create(http, gappy, title="quiet", send_push=False)
    await http.delete(f"/api/v1/notifications/{made[2]['id']}", headers=auth(gappy))
    for n in range(3):
        await create(http, plain, title=f"p{n}")
    asks: list[dict[str, Any]] = [
        {"user_id": str(gappy), "after_seq": 1, "limit": 2},
        {"user_id": str(plain)},
        {"user_id": str(nobody), "after_seq": 7},
        {"user_id": str(gappy), "after_seq": 4},
        {"user_id": str(plain), "after_seq": 3, "limit": 1},
    ]
    pages = await replay_pages(http, asks)
    assert [
        ([i["data"]["seq"] for i in p["items"]], p["has_more"], p["last_seq"]) for p in pages
    ] == [
        ([2, 4], True, 6),
        ([1, 2, 3], False, 3),
        ([], False, 0),
        ([5], False, 6),
        ([], False, 3),
    ]
    assert pages == [await single_page(http, ask) for ask in asks]


async def test_batch_replay_of_many_users(http: httpx.AsyncClient) -> None:
    """A batch of the largest allowed size, many users with histories of different lengths each
    asked from a different seq, answers what the single-user replay answers for every ask."""
    users = [uuid.uuid4() for _ in range(500)]
    items = [payload(u, title=f"{n}-{k}") for n, u in enumerate(users[:60]) for k in range(n % 4)]
    created = await http.post(
        "/internal/v1/notifications/batch", json={"notifications": items}, headers=INTERNAL
    )
    assert created.status_code == 201
    asks: list[dict[str, Any]] = [
        {"user_id": str(u), "after_seq": n % 3, "limit": 1 + n % 2} for n, u in enumerate(users)
    ]
    pages = await replay_pages(http, asks)
    assert len(pages) == len(asks)
    assert pages[:60] == [await single_page(http, ask) for ask in asks[:60]]
    assert {(len(p["items"]), p["has_more"], p["last_seq"]) for p in pages[60:]} == {(0, False, 0)}
    assert sum(len(p["items"]) for p in pages) > 0


def _ask(**fields: Any) -> dict[str, Any]:
    return {"user_id": str(uuid.uuid4())} | fields


@pytest.mark.parametrize(
    "body",
    [
        {"asks": []},
        {"asks": [_ask() for _ in range(501)]},
        {"asks": [_ask(limit=1000) for _ in range(21)]},  # 21,000 rows: over 20,000
        {"asks": [{"user_id": "nope"}]},
        {"asks": [{"after_seq": 1}]},
        {"asks": [_ask(after_seq=-1)]},
        {"asks": [_ask(after_seq=2**63)]},
        {"asks": [_ask(limit=0)]},
        {"asks": [_ask(limit=1001)]},
        {"asks": [_ask(before_seq=3)]},
        {"asks": [_ask()], "more": True},
        {},
    ],
)
async def test_batch_replay_bad_input_is_422(http: httpx.AsyncClient, body: Any) -> None:
    """A malformed batch (no ask, too many, limits adding up to too many rows, a bad or missing
    field in any ask, an unknown field) is refused whole with the 422 error body."""
    response = await http.post("/internal/v1/notifications/replay", json=body, headers=INTERNAL)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def _row(seq: int, content: str = "c") -> Stored:
    now = datetime.now(UTC)
    return Stored(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        seq=seq,
        title="t",
        content=content,
        type="test",
        action=None,
        related_entity_type=None,
        related_entity_id=None,
        is_read=False,
        read_at=None,
        created_at=now,
        updated_at=now,
    )


def test_fit_shortens_pages_past_the_byte_budget() -> None:
    """Frames are kept while they add up to less than the budget; past it each page keeps its
    first item only and says `has_more`, an empty page stays empty, and `last_seq` is kept."""
    big = [_row(seq, "x" * 1000) for seq in (1, 2, 3)]
    pages = [
        store.ReplayPage(big, has_more=False, last_seq=3),
        store.ReplayPage([_row(5), _row(6)], has_more=False, last_seq=9),
        store.ReplayPage([], has_more=False, last_seq=0),
        store.ReplayPage([_row(1)], has_more=True, last_seq=4),
    ]
    fitted = fit(pages, budget=1500)
    summary = [
        ([msgspec.json.decode(i)["data"]["seq"] for i in p.items], p.has_more, p.last_seq)
        for p in fitted
    ]
    assert summary == [([1, 2], True, 3), ([5], True, 9), ([], False, 0), ([1], True, 4)]
    assert bytes(fitted[0].items[0]) == frame_bytes(big[0])
    unbounded = fit(pages, budget=10**9)
    assert [len(p.items) for p in unbounded] == [3, 2, 0, 1]
    assert [p.has_more for p in unbounded] == [False, False, False, True]


async def test_batch_replay_body_not_json_is_400(http: httpx.AsyncClient) -> None:
    """A body that is not JSON answers 400 INVALID_JSON."""
    response = await http.post(
        "/internal/v1/notifications/replay",
        content=b"{asks",
        headers=INTERNAL | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_JSON"


async def test_user_api_for_internal_callers(
    http: httpx.AsyncClient, auth: Callable[[uuid.UUID], dict[str, str]]
) -> None:
    """The user endpoints mounted under /internal/v1/users/{user}/ answer with the internal token
    exactly as the public ones answer the user, and only for the user the path names."""
    user, other = uuid.uuid4(), uuid.uuid4()
    mine = [await create(http, user, title=f"n{n}") for n in range(3)]
    theirs = await create(http, other)
    base = f"/internal/v1/users/{user}/notifications"

    listed = await http.get(base, params={"page_size": 2}, headers=INTERNAL)
    public = await http.get("/api/v1/notifications", params={"page_size": 2}, headers=auth(user))
    assert listed.status_code == 200 and listed.json() == public.json()
    assert [i["title"] for i in listed.json()["items"]] == ["n2", "n1"]
    assert (await http.get(base + "/unread/count", headers=INTERNAL)).json() == {"unread_count": 3}

    marked = await http.patch(f"{base}/{mine[0]['id']}/read", headers=INTERNAL)
    assert marked.status_code == 200 and marked.json()["is_read"] is True
    # Another user's notification through this user's path is missing, not marked.
    assert (await http.patch(f"{base}/{theirs['id']}/read", headers=INTERNAL)).status_code == 404
    assert (await http.post(base + "/read-all", headers=INTERNAL)).status_code == 200
    assert (await http.get(base + "/unread/count", headers=INTERNAL)).json() == {"unread_count": 0}
    other_count = await http.get(
        f"/internal/v1/users/{other}/notifications/unread/count", headers=INTERNAL
    )
    assert other_count.json() == {"unread_count": 1}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-the-internal-token"}],
)
async def test_user_api_for_internal_callers_needs_the_internal_token(
    http: httpx.AsyncClient,
    auth: Callable[[uuid.UUID], dict[str, str]],
    headers: dict[str, str],
) -> None:
    """Without the internal token — even with the user's own valid JWT — the internal mount
    answers 401; a malformed user id answers 422."""
    user = uuid.uuid4()
    base = f"/internal/v1/users/{user}/notifications"
    assert (await http.get(base, headers=headers)).status_code == 401
    assert (await http.get(base, headers=auth(user))).status_code == 401
    bad = await http.get("/internal/v1/users/not-a-uuid/notifications", headers=INTERNAL)
    assert bad.status_code == 422
