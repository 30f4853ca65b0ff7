"""The public REST API through HTTP, as a frontend uses it: the seed's scenarios, ownership on
every endpoint with two users, pagination and cursors, and bad input."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.notifications_svc.conftest import create

Auth = Callable[[uuid.UUID], dict[str, str]]


async def test_list_newest_first_with_seed_fields(http: httpx.AsyncClient, auth: Auth) -> None:
    """The list shows the user's notifications newest first with the seed's fields and totals."""
    user = uuid.uuid4()
    first = await create(http, user, title="one")
    second = await create(http, user, title="two")
    response = await http.get("/api/v1/notifications", headers=auth(user))
    assert response.status_code == 200
    body = response.json()
    assert [i["id"] for i in body["items"]] == [second["id"], first["id"]]
    assert body["total"] == 2
    assert body["page"] == 1
    assert body["page_size"] == 20
    assert body["has_more"] is False
    assert body["next_cursor"] is None
    item = body["items"][1]
    assert item == first
    assert set(item) == {
        "id",
        "user_id",
        "seq",
        "title",
        "content",
        "type",
        "action",
        "related_entity_type",
        "related_entity_id",
        "is_read",
        "read_at",
        "created_at",
        "updated_at",
    }
    assert item["user_id"] == str(user)
    assert item["is_read"] is False
    assert item["read_at"] is None
    assert item["action"] == {"type": "open_task", "url": "/tasks/1"}


async def test_pagination_pages_and_cursor(http: httpx.AsyncClient, auth: Auth) -> None:
    """page/page_size slice the list (a page past the end is empty, with the right total);
    next_cursor walks the same order without offsets."""
    user = uuid.uuid4()
    for n in range(7):
        await create(http, user, title=f"n{n}")
    expected = [f"n{n}" for n in reversed(range(7))]

    pages = []
    for page in (1, 2, 3):
        response = await http.get(
            "/api/v1/notifications", params={"page": page, "page_size": 3}, headers=auth(user)
        )
        body = response.json()
        assert body["total"] == 7
        assert body["page"] == page
        pages.append([i["title"] for i in body["items"]])
    assert pages == [expected[0:3], expected[3:6], expected[6:7]]
    beyond = await http.get(
        "/api/v1/notifications", params={"page": 4, "page_size": 3}, headers=auth(user)
    )
    assert beyond.json() | {"page": 0} == {
        "items": [],
        "total": 7,
        "page": 0,
        "page_size": 3,
        "has_more": False,
        "next_cursor": None,
    }

    seen: list[str] = []
    params: dict[str, str | int] = {"page_size": 3}
    while True:
        body = (await http.get("/api/v1/notifications", params=params, headers=auth(user))).json()
        seen += [i["title"] for i in body["items"]]
        if body["next_cursor"] is None:
            assert body["has_more"] is False
            break
        assert body["has_more"] is True
        params = {"page_size": 3, "cursor": body["next_cursor"]}
    assert seen == expected


async def test_filters_unread_only_and_type(http: httpx.AsyncClient, auth: Auth) -> None:
    """unread_only and notification_type filter the list and its total, alone and together."""
    user = uuid.uuid4()
    task = await create(http, user, type="task_created")
    mail = await create(http, user, type="email_received")
    read_mail = await create(http, user, type="email_received")
    await http.patch(f"/api/v1/notifications/{read_mail['id']}/read", headers=auth(user))

    async def ids(**params: str) -> list[str]:
        body = (await http.get("/api/v1/notifications", params=params, headers=auth(user))).json()
        assert body["total"] == len(body["items"])
        return [i["id"] for i in body["items"]]

    assert await ids(unread_only="true") == [mail["id"], task["id"]]
    assert await ids(notification_type="email_received") == [read_mail["id"], mail["id"]]
    assert await ids(unread_only="true", notification_type="email_received") == [mail["id"]]
    assert await ids(unread_only="false") == [read_mail["id"], mail["id"], task["id"]]


async def test_mark_read_and_unread_count(http: httpx.AsyncClient, auth: Auth) -> None:
    """Marking read sets is_read/read_at, lowers the unread count, and is idempotent."""
    user = uuid.uuid4()
    one = await create(http, user)
    await create(http, user)
    count = await http.get("/api/v1/notifications/unread/count", headers=auth(user))
    assert count.status_code == 200
    assert count.json() == {"unread_count": 2}

    response = await http.patch(f"/api/v1/notifications/{one['id']}/read", headers=auth(user))
    assert response.status_code == 200
    read = response.json()
    assert read["id"] == one["id"]
    assert read["is_read"] is True
    assert read["read_at"] is not None
    again = await http.patch(f"/api/v1/notifications/{one['id']}/read", headers=auth(user))
    assert again.json()["read_at"] == read["read_at"]
    count = await http.get("/api/v1/notifications/unread/count", headers=auth(user))
    assert count.json() == {"unread_count": 1}


async def test_mark_all_read(http: httpx.AsyncClient, auth: Auth) -> None:
    """read-all marks every unread notification, reports how many, and then none remain."""
    user = uuid.uuid4()
    for _ in range(3):
        await create(http, user)
    response = await http.post("/api/v1/notifications/read-all", headers=auth(user))
    assert response.status_code == 200
    assert response.json() == {"marked_read": 3}
    again = await http.post("/api/v1/notifications/read-all", headers=auth(user))
    assert again.json() == {"marked_read": 0}
    count = await http.get("/api/v1/notifications/unread/count", headers=auth(user))
    assert count.json() == {"unread_count": 0}
    body = (await http.get("/api/v1/notifications", headers=auth(user))).json()
    assert all(i["is_read"] and i["read_at"] for i in body["items"])


async def test_delete(http: httpx.AsyncClient, auth: Auth) -> None:
    """Delete answers 204, the notification is gone, and deleting again is 404."""
    user = uuid.uuid4()
    one = await create(http, user)
    response = await http.delete(f"/api/v1/notifications/{one['id']}", headers=auth(user))
    assert response.status_code == 204
    body = (await http.get("/api/v1/notifications", headers=auth(user))).json()
    assert body["items"] == []
    assert body["total"] == 0
    again = await http.delete(f"/api/v1/notifications/{one['id']}", headers=auth(user))
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "NOT_FOUND"


async def test_unknown_id_is_404(http: httpx.AsyncClient, auth: Auth) -> None:
    """Marking or deleting an id that does not exist answers a JSON 404."""
    user = uuid.uuid4()
    missing = uuid.uuid4()
    for response in (
        await http.patch(f"/api/v1/notifications/{missing}/read", headers=auth(user)),
        await http.delete(f"/api/v1/notifications/{missing}", headers=auth(user)),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"


async def test_two_users_never_see_each_other(http: httpx.AsyncClient, auth: Auth) -> None:
    """Every endpoint: Bob cannot see, count, read, read-all or delete Alice's notifications,
    and her id answers him exactly like a missing one."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    hers = await create(http, alice)
    await create(http, bob)
    missing = uuid.uuid4()

    listed = (await http.get("/api/v1/notifications", headers=auth(bob))).json()
    assert [i["user_id"] for i in listed["items"]] == [str(bob)]
    assert listed["total"] == 1
    count = await http.get("/api/v1/notifications/unread/count", headers=auth(bob))
    assert count.json() == {"unread_count": 1}

    for method, path in (("PATCH", "/read"), ("DELETE", "")):
        foreign = await http.request(
            method, f"/api/v1/notifications/{hers['id']}{path}", headers=auth(bob)
        )
        absent = await http.request(
            method, f"/api/v1/notifications/{missing}{path}", headers=auth(bob)
        )
        assert foreign.status_code == absent.status_code == 404
        assert foreign.json()["error"] | {"details": None} == absent.json()["error"] | {
            "details": None
        }

    marked = await http.post("/api/v1/notifications/read-all", headers=auth(bob))
    assert marked.json() == {"marked_read": 1}

    mine = (await http.get("/api/v1/notifications", headers=auth(alice))).json()
    assert [(i["id"], i["is_read"]) for i in mine["items"]] == [(hers["id"], False)]
    count = await http.get("/api/v1/notifications/unread/count", headers=auth(alice))
    assert count.json() == {"unread_count": 1}


ENDPOINTS = [
    ("GET", "/api/v1/notifications"),
    ("PATCH", f"/api/v1/notifications/{uuid.uuid4()}/read"),
    ("POST", "/api/v1/notifications/read-all"),
    ("DELETE", f"/api/v1/notifications/{uuid.uuid4()}"),
    ("GET", "/api/v1/notifications/unread/count"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_token_required(
    http: httpx.AsyncClient, token_for: Callable[..., str], method: str, path: str
) -> None:
    """Every public endpoint answers 401 JSON without a token, with a bad, an expired or an
    internal token."""
    user = uuid.uuid4()
    for headers in (
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {token_for(user, ttl=-10)}"},
        {"Authorization": f"Bearer {token_for(user)}x"},
        {"Authorization": "Bearer test-internal-token-" + "y" * 32},
    ):
        response = await http.request(method, path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page": "abc"},
        {"page": "-1"},
        {"page_size": "0"},
        {"page_size": "101"},
        {"page_size": "1.5"},
        {"unread_only": "maybe"},
        {"notification_type": "x" * 51},
        {"notification_type": "nul\x00"},
        {"cursor": "not-a-cursor"},
        {"cursor": "czotMQ"},
    ],
)
async def test_bad_query_values_are_422(
    http: httpx.AsyncClient, auth: Auth, params: dict[str, str]
) -> None:
    """A bad page, page_size (max 100), unread_only, type or cursor is a 422 JSON error."""
    response = await http.get("/api/v1/notifications", params=params, headers=auth(uuid.uuid4()))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_page_size_100_is_allowed(http: httpx.AsyncClient, auth: Auth) -> None:
    """page_size=100 is the largest page and is accepted."""
    response = await http.get(
        "/api/v1/notifications", params={"page_size": 100}, headers=auth(uuid.uuid4())
    )
    assert response.status_code == 200
    assert response.json()["page_size"] == 100


@pytest.mark.parametrize(("method", "suffix"), [("PATCH", "/read"), ("DELETE", "")])
async def test_malformed_id_is_422(
    http: httpx.AsyncClient, auth: Auth, method: str, suffix: str
) -> None:
    """A notification id that is not a UUID answers 422 JSON, not 404 or 500."""
    response = await http.request(
        method, f"/api/v1/notifications/not-a-uuid{suffix}", headers=auth(uuid.uuid4())
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
