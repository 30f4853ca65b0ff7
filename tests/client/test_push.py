"""Web Push in a real Chromium: the console's "notify me when I am away" switch (`enablePush()`)
registers the service worker and a subscription made with the server's VAPID key; the stack then
pushes a notification to the push-service stand-in, which decrypts it; that payload, dispatched
to the service worker as a synthetic `push` event, becomes a system notification, a duplicate of
it is dropped, and a synthetic `notificationclick` brings the console forward on it. (The
worker's other click branch, `clients.openWindow("/console")` when no console is open, is not
exercised: Chromium lets a worker open a window only while handling a click the browser itself
dispatched, never a synthetic one.)

The browser's own push service (FCM) cannot be reached here, so `PushManager.subscribe` is
replaced in the page by one returning a stand-in subscription (a real P-256 key pair): every
other step — permission, worker registration, key conversion, the API calls, the worker's
handlers — is the browser's and the stack's own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from shared.settings import Settings
from tests.agent_svc.stack import ChatStack, start_stack
from tests.client.conftest import create_notification
from tests.conftest import SpawnService
from tests.support.push_service import PushService, unb64url

STUB_SUBSCRIBE = """
(() => {
  const json = %s;
  let current = null;
  PushManager.prototype.subscribe = async function (options) {
    const key = new Uint8Array(options.applicationServerKey);
    window.__subscribedWith = Array.from(key);
    current = {
      endpoint: json.endpoint,
      options: { applicationServerKey: key.buffer },
      toJSON: () => json,
      unsubscribe: async () => { current = null; return true; },
    };
    return current;
  };
  PushManager.prototype.getSubscription = async function () { return current; };
})();
"""

# Dispatch a synthetic event in the service worker and wait (bounded) for its visible effect.
DISPATCH_PUSH = """
async ([payload, waitFor]) => {
  self.dispatchEvent(new PushEvent("push", { data: JSON.stringify(payload) }));
  for (let i = 0; i < 200; i++) {
    const shown = await self.registration.getNotifications();
    if (shown.some((n) => n.tag === waitFor)) {
      return shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error("notification " + waitFor + " never shown");
}
"""
CLOSE = """
async (tag) => {
  for (const n of await self.registration.getNotifications({ tag })) n.close();
  return (await self.registration.getNotifications({ tag })).length;
}
"""
CLICK = """
async (tag) => {
  const [notification] = await self.registration.getNotifications({ tag });
  self.dispatchEvent(new NotificationEvent("notificationclick", { notification }));
  return true;
}
"""
SHOWN_TAGS = "async () => (await self.registration.getNotifications()).map((n) => n.tag)"


@pytest.fixture(scope="module")
def push_stack(
    spawn_service: SpawnService, tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[ChatStack]:
    """The console's stack, its notifications_svc taking the stand-in's loopback endpoints and
    pushing every notification (policy `always`: the console itself is connected)."""
    stack = start_stack(
        spawn_service,
        tmp_path_factory.mktemp("push-console"),
        offline=True,
        notifications=True,
        notifications_database=base_env["DATABASE_URL"],
        PUSH_ALLOW_LOOPBACK="true",
        PUSH_POLICY="always",
    )
    try:
        yield stack
    finally:
        stack.stop()


def _worker(context: Any) -> Any:
    if context.service_workers:
        return context.service_workers[0]
    return context.wait_for_event("serviceworker", timeout=10_000)


def test_switch_subscribes_and_the_worker_shows_dedupes_and_opens(
    push_stack: ChatStack,
    browser: Any,
    push_service: PushService,
    token_for: Callable[..., str],
    settings: Settings,
) -> None:
    """Switch on → subscribed with the VAPID key and registered; a created notification is
    pushed, decrypted by the stand-in, and shown by the worker; the same push again (after the
    user closed it) is dropped; a click focuses the console on it; switch off → unregistered."""
    user = uuid.uuid4()
    token = token_for(user)
    gateway = push_stack.gateway.url
    browser_subscription = push_service.subscribe()
    context = browser.new_context()
    try:
        context.grant_permissions(["notifications"], origin=gateway)
        context.add_init_script(STUB_SUBSCRIBE % json.dumps(browser_subscription.json()))
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{gateway}/console#token={token}")
        page.wait_for_selector("#state[data-status=open]", timeout=10_000)
        page.wait_for_selector("#push-switch[data-state=off]", timeout=10_000)

        page.click("#push-switch")
        page.wait_for_selector("#push-switch[data-state=on]", timeout=10_000)
        subscribed_with = bytes(page.evaluate("window.__subscribedWith"))
        assert subscribed_with == unb64url(settings.vapid_public_key)
        headers = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{gateway}/api/v1/push/subscriptions", headers=headers).json()
        assert [s["endpoint"] for s in listed["items"]] == [browser_subscription.endpoint]
        worker = _worker(context)
        assert worker.url.endswith("/console/app/sw.js")

        first = create_notification(push_stack, user, "Build finished", content="main is green")
        push_service.wait_until(lambda: len(push_service.received(browser_subscription)) == 1)
        payload = push_service.received(browser_subscription)[0].payload
        assert payload["id"] == first["id"]
        shown = worker.evaluate(DISPATCH_PUSH, [payload, first["id"]])
        assert shown == [
            {
                "title": "Build finished",
                "body": "main is green",
                "tag": first["id"],
                "data": {"id": first["id"], "type": "test", "action": None},
            }
        ]

        assert worker.evaluate(CLOSE, first["id"]) == 0  # the user dismissed it
        second = {"id": str(uuid.uuid4()), "title": "Second", "content": "", "type": "test"}
        worker.evaluate(
            "async (p) => self.dispatchEvent(new PushEvent('push', {data: JSON.stringify(p)}))",
            payload,
        )
        # Pushes are handled in order: once the next one shows, the duplicate was handled.
        worker.evaluate(DISPATCH_PUSH, [second, second["id"]])
        assert worker.evaluate(SHOWN_TAGS) == [second["id"]]

        worker.evaluate(CLICK, second["id"])
        page.wait_for_selector(f"body[data-push-opened='{second['id']}']", timeout=5_000)
        assert worker.evaluate(SHOWN_TAGS) == []  # the click closed it

        page.click("#push-switch")
        page.wait_for_selector("#push-switch[data-state=off]", timeout=10_000)
        listed = httpx.get(f"{gateway}/api/v1/push/subscriptions", headers=headers).json()
        assert listed == {"items": []}
        assert errors == []
        assert push_service.errors == []
    finally:
        context.close()


def test_service_worker_is_allowed_the_console_scope(push_stack: ChatStack) -> None:
    """sw.js is served with `Service-Worker-Allowed: /console` (its folder is below the page)."""
    response = httpx.get(push_stack.gateway.url + "/console/app/sw.js")
    assert response.status_code == 200
    assert response.headers["service-worker-allowed"] == "/console"
    assert response.headers["content-type"].startswith("text/javascript")
