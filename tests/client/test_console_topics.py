"""The console's topic panel in a real Chromium against the real stack: two users subscribe to
the same topic, each sees the other in "who is here", and a publication made through the
internal API shows on both pages, as text."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.agent_svc.stack import ChatStack
from tests.client.conftest import PageLog
from tests.client.test_console import console_url, open_console
from tests.conftest import TEST_INTERNAL_TOKEN

OpenPage = Callable[..., tuple[Any, PageLog]]


def _subscribe(page: Any, topic: str) -> None:
    page.fill("#topic-name", topic)
    page.click("#topic-subscribe")
    page.wait_for_selector("#topic-status[data-status=subscribed]", timeout=5_000)


def test_topic_panel_shows_publications_and_who_is_here(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """Both pages list both users once subscribed, and both show a publication within 2 s."""
    topic = f"public:console-{uuid.uuid4().hex[:8]}"
    alice, bob = uuid.uuid4(), uuid.uuid4()
    page_a, log_a = open_console(open_page, console_url(console_stack, token_for(alice)))
    page_b, log_b = open_console(open_page, console_url(console_stack, token_for(bob)))
    _subscribe(page_a, topic)
    _subscribe(page_b, topic)
    for page in (page_a, page_b):
        for user in (alice, bob):
            page.wait_for_selector(f"#who-is-here li[data-user='{user}']", timeout=5_000)
    response = httpx.post(
        f"{console_stack.gateway.url}/internal/v1/topics/{topic}/publications",
        json={"data": "<b>deploy finished</b>"},
        headers={"authorization": f"Bearer {TEST_INTERNAL_TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 201, response.text
    for page in (page_a, page_b):
        row = page.wait_for_selector("#publications li[data-offset='1']")
        assert "<b>deploy finished</b>" in row.inner_text()  # shown as text, not markup
        assert page.query_selector("#publications b") is None
    assert log_a.errors == [] and log_b.errors == []
