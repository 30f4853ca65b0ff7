"""The push REST API on a real notifications_svc: registering, listing and deleting
subscriptions, validation (422 naming the field), the per-user cap, and that another user's
subscription answers 404 on every route."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.support.processes import ServiceProcess
from tests.support.push_service import PushService, b64url

Auth = Callable[[uuid.UUID], dict[str, str]]
SUBSCRIPTIONS = "/api/v1/push/subscriptions"


@pytest.fixture
async def api(push_notifications: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=push_notifications.url, timeout=30) as client:
        yield client


async def test_vapid_public_key_is_served_without_a_token(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    """The browser's applicationServerKey: the configured public key, no token needed."""
    response = await api.get("/api/v1/push/vapid-public-key")
    assert response.status_code == 200
    assert response.json() == {"public_key": settings.vapid_public_key}


async def test_register_is_idempotent_per_endpoint(
    api: httpx.AsyncClient, auth: Auth, push_service: PushService
) -> None:
    """The same endpoint twice: 201 then 200 with the same id; the list shows it once."""
    user = uuid.uuid4()
    browser = push_service.subscribe()
    first = await api.post(SUBSCRIPTIONS, json=browser.json(), headers=auth(user))
    again = await api.post(SUBSCRIPTIONS, json=browser.json(), headers=auth(user))
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["endpoint"] == browser.endpoint
    assert first.json()["keys"] == browser.json()["keys"]
    listed = await api.get(SUBSCRIPTIONS, headers=auth(user))
    assert [item["id"] for item in listed.json()["items"]] == [first.json()["id"]]


async def test_delete_removes_it(
    api: httpx.AsyncClient, auth: Auth, push_service: PushService
) -> None:
    """DELETE answers 204, then 404; the list is empty."""
    user = uuid.uuid4()
    made = await api.post(SUBSCRIPTIONS, json=push_service.subscribe().json(), headers=auth(user))
    path = f"{SUBSCRIPTIONS}/{made.json()['id']}"
    assert (await api.delete(path, headers=auth(user))).status_code == 204
    assert (await api.delete(path, headers=auth(user))).status_code == 404
    assert (await api.get(SUBSCRIPTIONS, headers=auth(user))).json() == {"items": []}


async def test_another_users_subscription_is_404_on_every_route(
    api: httpx.AsyncClient, auth: Auth, push_service: PushService
) -> None:
    """Another user cannot see or delete a subscription: DELETE answers 404 exactly like an
    unknown id, the list does not show it, and it still works for its owner."""
    owner, intruder = uuid.uuid4(), uuid.uuid4()
    made = await api.post(SUBSCRIPTIONS, json=push_service.subscribe().json(), headers=auth(owner))
    path = f"{SUBSCRIPTIONS}/{made.json()['id']}"
    foreign = await api.delete(path, headers=auth(intruder))
    unknown = await api.delete(f"{SUBSCRIPTIONS}/{uuid.uuid4()}", headers=auth(intruder))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"]["code"] == unknown.json()["error"]["code"] == "NOT_FOUND"
    assert (await api.get(SUBSCRIPTIONS, headers=auth(intruder))).json() == {"items": []}
    owned = (await api.get(SUBSCRIPTIONS, headers=auth(owner))).json()["items"]
    assert [item["id"] for item in owned] == [made.json()["id"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", SUBSCRIPTIONS),
        ("GET", SUBSCRIPTIONS),
        ("DELETE", f"{SUBSCRIPTIONS}/{uuid.uuid4()}"),
    ],
)
async def test_token_required(api: httpx.AsyncClient, method: str, path: str) -> None:
    """Every subscription route answers 401 without a valid token."""
    response = await api.request(method, path, json={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


def _valid(push_service: PushService) -> dict[str, Any]:
    return push_service.subscribe().json()


def _with(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    keys = body["keys"] | changes.pop("keys", {})
    return body | {"keys": keys} | changes


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: {k: v for k, v in b.items() if k != "endpoint"}, "endpoint"),
        (lambda b: _with(b, endpoint=42), "endpoint"),
        (lambda b: _with(b, endpoint="ftp://push.example/x"), "endpoint"),
        (lambda b: _with(b, endpoint="https://push.example/" + "x" * 2100), "endpoint"),
        (lambda b: _with(b, endpoint="http://10.0.0.1:8080/push/x"), "endpoint"),
        (lambda b: {k: v for k, v in b.items() if k != "keys"}, "keys"),
        (lambda b: _with(b, keys={"p256dh": "not base64!"}), "keys.p256dh"),
        (lambda b: _with(b, keys={"p256dh": b64url(b"\x04" + b"\x01" * 64)}), "keys.p256dh"),
        (lambda b: _with(b, keys={"p256dh": b64url(b"\x04" * 33)}), "keys.p256dh"),
        (lambda b: _with(b, keys={"auth": b64url(b"short")}), "keys.auth"),
        (lambda b: _with(b, keys={"auth": 7}), "keys.auth"),
        (lambda b: {"endpoint": b["endpoint"], "keys": {"auth": b["keys"]["auth"]}}, "keys.p256dh"),
    ],
)
async def test_invalid_subscription_is_422_naming_the_field(
    api: httpx.AsyncClient,
    auth: Auth,
    push_service: PushService,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    field: str,
) -> None:
    """A malformed PushSubscription answers 422 VALIDATION_ERROR with `details.field`."""
    response = await api.post(
        SUBSCRIPTIONS, json=change(_valid(push_service)), headers=auth(uuid.uuid4())
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == field


async def test_not_json_is_400(api: httpx.AsyncClient, auth: Auth) -> None:
    """A body that is not JSON answers 400 INVALID_JSON."""
    response = await api.post(SUBSCRIPTIONS, content=b"{nope", headers=auth(uuid.uuid4()))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_JSON"


async def test_loopback_endpoint_refused_unless_allowed(
    http: httpx.AsyncClient, auth: Auth, push_service: PushService
) -> None:
    """The session's default service (PUSH_ALLOW_LOOPBACK unset) takes https endpoints only."""
    response = await http.post(SUBSCRIPTIONS, json=_valid(push_service), headers=auth(uuid.uuid4()))
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "endpoint"


async def test_known_push_services_only(
    api: httpx.AsyncClient, auth: Auth, push_service: PushService
) -> None:
    """An https endpoint is accepted on the browsers' push services (PUSH_ENDPOINT_HOSTS) and
    refused elsewhere, so a subscription cannot aim the service's requests at another host."""
    browser = _valid(push_service)
    user = uuid.uuid4()
    for endpoint, status in [
        ("https://fcm.googleapis.com/fcm/send/abc", 201),
        ("https://web.push.apple.com/QGx", 201),
        ("https://wns2-db5p.notify.windows.com/w/?token=x", 201),
        ("https://updates.push.services.mozilla.com/wpush/v2/x", 201),
        ("https://metadata.google.internal/computeMetadata/v1/", 422),
        ("https://push.apple.com.evil.example/x", 422),
        ("https://10.0.0.7/push", 422),
    ]:
        response = await api.post(
            SUBSCRIPTIONS, json=browser | {"endpoint": endpoint}, headers=auth(user)
        )
        assert response.status_code == status, (endpoint, response.text)


async def test_cap_per_user(api: httpx.AsyncClient, auth: Auth, push_service: PushService) -> None:
    """PUSH_MAX_SUBSCRIPTIONS (10) subscriptions per user; the 11th answers 409, re-registering
    one of the ten still works."""
    user = uuid.uuid4()
    browsers = [push_service.subscribe() for _ in range(11)]
    for browser in browsers[:10]:
        made = await api.post(SUBSCRIPTIONS, json=browser.json(), headers=auth(user))
        assert made.status_code == 201
    over = await api.post(SUBSCRIPTIONS, json=browsers[10].json(), headers=auth(user))
    assert over.status_code == 409
    assert over.json()["error"]["code"] == "CONFLICT"
    again = await api.post(SUBSCRIPTIONS, json=browsers[0].json(), headers=auth(user))
    assert again.status_code == 200


async def test_endpoint_moves_to_the_user_now_registering_it(
    api: httpx.AsyncClient, auth: Auth, push_service: PushService
) -> None:
    """A browser registered by one user and then by another belongs to the second only, under
    a new id (the first user's id answers 404 for both)."""
    first, second = uuid.uuid4(), uuid.uuid4()
    browser = push_service.subscribe()
    old = await api.post(SUBSCRIPTIONS, json=browser.json(), headers=auth(first))
    new = await api.post(SUBSCRIPTIONS, json=browser.json(), headers=auth(second))
    assert new.status_code == 201 and new.json()["id"] != old.json()["id"]
    assert (await api.get(SUBSCRIPTIONS, headers=auth(first))).json() == {"items": []}
    old_path = f"{SUBSCRIPTIONS}/{old.json()['id']}"
    assert (await api.delete(old_path, headers=auth(second))).status_code == 404
