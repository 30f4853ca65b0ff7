"""The "done when" of the notifications service, as a frontend sees it: two users' tokens drive
every public endpoint through the gateway's URL, each sees and changes only their own data, and
a Redis subscriber on each user's channel receives every notification committed for them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import SpawnService
from tests.notifications_svc.conftest import create
from tests.notifications_svc.test_outbox import subscribed
from tests.support.processes import ServiceProcess

Auth = Callable[[uuid.UUID], dict[str, str]]


@pytest.fixture(scope="module")
def gateway(spawn_service: SpawnService, notifications: ServiceProcess) -> ServiceProcess:
    """A gateway whose public facade forwards to the session's notifications_svc."""
    return spawn_service("gateway", NOTIFICATIONS_URL=notifications.url)


async def test_two_users_through_the_gateway(
    http: httpx.AsyncClient, gateway: ServiceProcess, auth: Auth, settings: Settings
) -> None:
    """Alice and Bob use every endpoint through the gateway: lists, counts, read, read-all and
    delete touch only the caller's notifications; the other's id answers byte for byte like a
    missing one; and each user's channel carries exactly their own notifications."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    async with (
        subscribed(settings.redis_url, alice) as alice_channel,
        subscribed(settings.redis_url, bob) as bob_channel,
    ):
        hers = [await create(http, alice, title=f"alice {n}") for n in range(3)]
        his = [await create(http, bob, title=f"bob {n}") for n in range(2)]
        alice_frames = await alice_channel.frames(3)
        bob_frames = await bob_channel.frames(2)
        assert await alice_channel.nothing_more(wait=0.5)
    assert [(seq, f.data.id) for seq, f in alice_frames] == [(h["seq"], h["id"]) for h in hers]
    assert [(seq, f.data.id) for seq, f in bob_frames] == [(h["seq"], h["id"]) for h in his]

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as front:

        async def listed(user: uuid.UUID, **params: str) -> list[str]:
            response = await front.get("/api/v1/notifications", params=params, headers=auth(user))
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["total"] == len(body["items"])
            assert {i["user_id"] for i in body["items"]} <= {str(user)}
            return [i["id"] for i in body["items"]]

        async def unread(user: uuid.UUID) -> int:
            response = await front.get("/api/v1/notifications/unread/count", headers=auth(user))
            assert response.status_code == 200, response.text
            count: int = response.json()["unread_count"]
            return count

        assert await listed(alice) == [h["id"] for h in reversed(hers)]
        assert await listed(bob) == [h["id"] for h in reversed(his)]
        assert (await unread(alice), await unread(bob)) == (3, 2)

        # Bob aims at Alice's notifications: every answer equals the one for a missing id.
        missing = str(uuid.uuid4())
        for method, suffix in (("PATCH", "/read"), ("DELETE", "")):
            foreign = await front.request(
                method, f"/api/v1/notifications/{hers[0]['id']}{suffix}", headers=auth(bob)
            )
            absent = await front.request(
                method, f"/api/v1/notifications/{missing}{suffix}", headers=auth(bob)
            )
            assert foreign.status_code == absent.status_code == 404
            assert foreign.headers["content-type"] == absent.headers["content-type"]
            assert foreign.json() == json.loads(absent.text.replace(missing, hers[0]["id"]))

        # Bob's own actions leave Alice untouched.
        read = await front.patch(f"/api/v1/notifications/{his[0]['id']}/read", headers=auth(bob))
        assert read.status_code == 200 and read.json()["is_read"] is True
        marked = await front.post("/api/v1/notifications/read-all", headers=auth(bob))
        assert marked.json() == {"marked_read": 1}
        gone = await front.delete(f"/api/v1/notifications/{his[1]['id']}", headers=auth(bob))
        assert gone.status_code == 204
        assert await listed(bob) == [his[0]["id"]]
        assert (await unread(alice), await unread(bob)) == (3, 0)
        assert await listed(alice, unread_only="true") == [h["id"] for h in reversed(hers)]

        # Alice's own actions work on hers.
        read = await front.patch(f"/api/v1/notifications/{hers[0]['id']}/read", headers=auth(alice))
        assert read.status_code == 200 and read.json()["id"] == hers[0]["id"]
        assert await listed(alice, unread_only="true") == [hers[2]["id"], hers[1]["id"]]
        gone = await front.delete(f"/api/v1/notifications/{hers[2]['id']}", headers=auth(alice))
        assert gone.status_code == 204
        marked = await front.post("/api/v1/notifications/read-all", headers=auth(alice))
        assert marked.json() == {"marked_read": 1}
        assert await listed(alice) == [hers[1]["id"], hers[0]["id"]]
        assert await listed(bob) == [his[0]["id"]]

        # Without a valid token the gateway's facade answers 401 on every endpoint.
        for method, path in (
            ("GET", "/api/v1/notifications"),
            ("GET", "/api/v1/notifications/unread/count"),
            ("PATCH", f"/api/v1/notifications/{hers[0]['id']}/read"),
            ("POST", "/api/v1/notifications/read-all"),
            ("DELETE", f"/api/v1/notifications/{hers[0]['id']}"),
        ):
            response = await front.request(method, path, headers={"Authorization": "Bearer x"})
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
        assert await listed(alice) == [hers[1]["id"], hers[0]["id"]]
