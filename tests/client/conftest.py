"""Fixtures for the client tests: Debian's chromium driven by Playwright, and a real stack behind
the console (notifications_svc on a database of its own, agent_svc with the offline model, a
gateway, private Redis).

Without chromium the browser tests skip with the reason, except under CI (`CI` set), where
`.ci/run` installs it and its absence is a failure rather than a silently skipped guarantee.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.agent_svc.stack import ChatStack, start_stack
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService

CHROMIUM = "/usr/bin/chromium"
# Playwright's own browser download cannot be reached here: Debian's chromium, headless, with
# nothing that phones home (a request log must show the gateway only).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INTERNAL = {"authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}


def chromium_or_skip() -> str:
    """The chromium binary; skip (outside CI) or fail (in CI) when it is missing."""
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it in CI)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed: it is in the dev extra")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per module (each test gets fresh contexts from it). Not per session:
    Playwright's sync API keeps an event loop of its own, which must not outlive the module into
    other modules' asyncio tests."""
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def console_stack(
    spawn_service: SpawnService, tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[ChatStack]:
    """The stack the console talks to: the offline model streams word by word (50 ms apart)."""
    stack = start_stack(
        spawn_service,
        tmp_path_factory.mktemp("console"),
        offline=True,
        notifications=True,
        notifications_database=base_env["DATABASE_URL"],
        AGENT_OFFLINE_DELAY="0.05",
    )
    try:
        yield stack
    finally:
        stack.stop()


def create_notification(stack: ChatStack, user_id: object, title: str, **fields: Any) -> Any:
    """A notification created through notifications_svc's internal API; the stored item."""
    body = {"user_id": str(user_id), "title": title, "content": "", "type": "test"} | fields
    response = httpx.post(
        stack.extra[0].url + "/internal/v1/notifications", json=body, headers=INTERNAL, timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()


@dataclass
class PageLog:
    """What a page did: every request and WebSocket URL, console errors, dialogs."""

    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., tuple[Any, PageLog]]]:
    """Factory: a new page (own context: own storage) with its activity logged."""
    contexts: list[Any] = []

    def open_(viewport: dict[str, int] | None = None) -> tuple[Any, PageLog]:
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
        contexts.append(context)
        page = context.new_page()
        log = PageLog()
        page.on("request", lambda request: log.requests.append(request.url))
        page.on("websocket", lambda ws: log.websockets.append(ws.url))
        page.on(
            "console",
            lambda message: log.errors.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: log.errors.append(str(error)))

        def dialog(d: Any) -> None:
            log.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        return page, log

    yield open_
    for context in contexts:
        context.close()
