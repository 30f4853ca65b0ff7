"""The console in a real Chromium against the real stack: sign-in by fragment, live inbox, chat
streaming, reload mid-answer, expired token, markup in notifications, the seed's own snippet.

Timing assertions (open within 2 s, a notification within 1 s) measure from the action to the
condition; waiting is always for a condition, never a fixed sleep, except where the test checks
that something does *not* happen (an observation window, named as such).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.agent_svc.stack import ChatStack
from tests.client.conftest import PageLog, create_notification

OpenPage = Callable[..., tuple[Any, PageLog]]
ROOT = Path(__file__).resolve().parents[2]


def console_url(stack: ChatStack, token: str, base: str | None = None) -> str:
    return f"{base or stack.gateway.url}/console#token={token}"


def open_console(open_page: OpenPage, url: str, **kwargs: Any) -> tuple[Any, PageLog]:
    page, log = open_page(**kwargs)
    page.goto(url)
    page.wait_for_selector("#state[data-status=open]", timeout=10_000)
    return page, log


def badge(page: Any) -> int:
    return int(page.inner_text("#badge"))


def test_console_opens_with_the_fragment_token(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """The page shows `open`, talks to nothing but the gateway, logs no error, keeps the token
    out of the address bar, and is served with a strict CSP."""
    page, log = open_page()
    response = page.goto(console_url(console_stack, token_for(uuid.uuid4())))
    page.wait_for_selector("#state[data-status=open]", timeout=10_000)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    origin = console_stack.gateway.url
    assert log.requests and all(url.startswith(origin + "/") for url in log.requests), log.requests
    assert log.websockets == [
        w for w in log.websockets if w.startswith(console_stack.gateway.ws_url + "/api/v1/ws/")
    ]
    assert "token=" not in page.url
    assert all("token" not in url for url in log.websockets), "the token went into a URL"
    assert log.errors == []


def test_notification_arrives_live_and_read_state_survives_a_reload(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """A notification created through the internal API shows live (no reload) with the badge
    +1; marking it read takes the badge back, and it is still read after a reload."""
    user = uuid.uuid4()
    create_notification(console_stack, user, "older one")
    page, log = open_console(open_page, console_url(console_stack, token_for(user)))
    page.wait_for_function("() => document.getElementById('badge').textContent === '1'")
    item = create_notification(console_stack, user, "Build 7 is green", content="412 tests")
    row = f"li[data-id='{item['id']}']"
    page.wait_for_selector(row)
    page.wait_for_function("() => document.getElementById('badge').textContent === '2'")
    assert page.inner_text("#announce") == "New notification: Build 7 is green"
    assert page.get_attribute(row, "class") == "notification unread"

    page.click(f"{row} .mark-read")
    page.wait_for_function("() => document.getElementById('badge').textContent === '1'")
    page.reload()
    page.wait_for_selector("#state[data-status=open]")
    page.wait_for_selector(row)
    assert page.get_attribute(row, "class") == "notification"
    assert badge(page) == 1
    assert log.errors == []


def test_chat_answer_streams_with_its_tool_call(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """A question's answer is rendered in at least 3 partial states before `end`, and the tool
    call and its result are shown as they happen."""
    page, log = open_console(open_page, console_url(console_stack, token_for(uuid.uuid4())))
    page.evaluate(RECORD_RENDERINGS)
    page.fill("#question", "notify me that the deploy finished")
    page.click("#send")
    page.wait_for_function("() => window.__finished.length > 0", timeout=30_000)
    renderings: list[str] = page.evaluate("window.__renderings")
    finished = page.evaluate("window.__finished[0]")
    assert finished["status"] == "complete"
    partial = [text for text in renderings if text and text != finished["text"]]
    assert len(partial) >= 3, renderings
    assert all(finished["text"].startswith(text) for text in partial)
    assert finished["text"].startswith("[offline model]")
    assert page.locator(".tool.call").first.inner_text().startswith("tool call: notify_user")
    assert "tool result: notify_user" in page.locator(".tool.result").first.inner_text()
    # The tool created a notification: it arrives in the inbox too.
    page.wait_for_selector("li.notification >> text=the deploy finished")
    assert log.errors == []


# Records, in the page, each rendering of the streaming answer's text and the text it ends with
# (see the file's comment).
RECORD_RENDERINGS = "\n".join(
    line
    for line in (Path(__file__).parent / "record_renderings.js").read_text().splitlines()
    if not line.startswith("//")
)


def test_reload_mid_answer_completes_without_gap_or_repeat(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """Reloading while an answer streams: the page resumes it where it was, and the text it ends
    with is exactly the stored answer (nothing missing, nothing twice)."""
    user = uuid.uuid4()
    token = token_for(user)
    page, log = open_console(open_page, console_url(console_stack, token))
    # After the reload the recorder must be there before the page's own script runs.
    page.context.add_init_script(script=f"({RECORD_RENDERINGS})()")
    question = "please repeat " + " ".join(f"word{i}" for i in range(40))
    page.fill("#question", question)
    page.click("#send")
    # Mid-answer: some text has arrived (and was saved for the reload), the end has not.
    page.wait_for_function(
        "() => { const p = JSON.parse(sessionStorage.getItem('console.pending-answer'));"
        " return p && p.text.length > 60; }",
        timeout=30_000,
    )
    before: str = page.evaluate("JSON.parse(sessionStorage.getItem('console.pending-answer')).text")
    page.reload()
    page.wait_for_function(
        "() => window.__finished && window.__finished.length > 0", timeout=30_000
    )
    finished = page.evaluate("window.__finished[0]")
    assert finished["status"] == "complete"
    session_id = page.evaluate("document.getElementById('sessions').value")
    history = httpx.get(
        f"{console_stack.gateway.url}/api/v1/sessions/{session_id}/messages",
        headers={"authorization": f"Bearer {token}"},
    ).json()["items"]
    stored = history[-1]
    assert stored["role"] == "assistant" and stored["status"] == "complete"
    assert finished["text"] == stored["content"]
    assert finished["text"].startswith(before) and len(before) < len(finished["text"])
    assert log.errors == []


def test_expired_token_is_reported_and_not_retried(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """An expired token: the page says so and stops; one WebSocket attempt, no loop."""
    page, log = open_page()
    page.goto(console_url(console_stack, token_for(uuid.uuid4(), ttl=-60)))
    page.wait_for_selector("#state[data-status=closed]", timeout=10_000)
    assert "token expired" in page.inner_text("#alert")
    assert page.inner_text("#last-close").startswith("1008 token expired")
    # Observation window: nothing may happen during it (a loop would show more attempts).
    page.wait_for_timeout(3_000)
    assert len(log.websockets) == 1, log.websockets
    assert page.evaluate("window.consoleClient.stats.connects") == 1
    assert page.is_visible("#sign-in")


def test_markup_in_a_notification_is_shown_as_text(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """A title that is HTML shows as that text and runs nothing: no dialog, no request for `x`,
    no element made from it."""
    user = uuid.uuid4()
    page, log = open_console(open_page, console_url(console_stack, token_for(user)))
    title = "<img src=x onerror=alert(1)>"
    item = create_notification(console_stack, user, title, content="<script>alert(2)</script>")
    row = f"li[data-id='{item['id']}']"
    page.wait_for_selector(row)
    assert page.inner_text(f"{row} .title") == title
    assert page.inner_text(f"{row} .content") == "<script>alert(2)</script>"
    assert page.locator(f"{row} img, {row} script").count() == 0
    page.reload()  # the REST rendering path, too
    page.wait_for_selector(row)
    assert page.inner_text(f"{row} .title") == title
    assert page.locator("#notifications img").count() == 0
    assert log.dialogs == []
    assert not [url for url in log.requests if re.search(r"/x(\?|$)", url)]
    assert log.errors == []


SNIPPET = re.compile(r"// --- seed snippet begins ---\n(.*)// --- seed snippet ends ---", re.S)


def test_the_seed_javascript_snippet_works_in_the_browser(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """The seed's client snippet, unchanged, run in a page of the gateway's origin, receives the
    answer's tokens and its end."""
    source = (ROOT / "tests" / "gateway" / "seed_client.js").read_text()
    match = SNIPPET.search(source)
    assert match is not None
    page, _ = open_page()
    page.goto(console_stack.gateway.url + "/healthz")
    result = page.evaluate(
        "async ([token, snippet]) => { const chat = []; const logged = [];"
        " const appendToChat = (text) => chat.push(text);"
        " const console = {log: (...args) => logged.push(args.join(' '))};"
        " await new Function('fetch', 'token', 'appendToChat', 'console',"
        " `return (async () => {${snippet}})()`)(fetch, token, appendToChat, console);"
        " return {chat, logged}; }",
        [token_for(uuid.uuid4()), match[1]],
    )
    text = "".join(result["chat"])
    assert text.startswith("[offline model] You said: 'Hello'")
    assert any(line.startswith("Streaming complete") for line in result["logged"])


def test_changes_made_elsewhere_show_up_live(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """Marking read, deleting and reading all through the REST API (as another tab or device
    would) updates the open page's list and badge without a reload."""
    user = uuid.uuid4()
    token = token_for(user)
    items = [create_notification(console_stack, user, f"item {i}") for i in range(3)]
    page, log = open_console(open_page, console_url(console_stack, token))
    expect_badge = "(n) => document.getElementById('badge').textContent === String(n)"
    page.wait_for_function(expect_badge, arg=3)
    api = httpx.Client(
        base_url=console_stack.gateway.url + "/api/v1/notifications",
        headers={"authorization": f"Bearer {token}"},
    )
    with api:
        assert api.patch(f"/{items[0]['id']}/read").status_code == 200
        page.wait_for_function(expect_badge, arg=2)
        row = f"li[data-id='{items[0]['id']}']"
        assert page.get_attribute(row, "class") == "notification"
        assert api.delete(f"/{items[1]['id']}").status_code == 204
        page.wait_for_selector(f"li[data-id='{items[1]['id']}']", state="detached")
        page.wait_for_function(expect_badge, arg=1)
        assert api.post("/read-all").status_code == 200
        page.wait_for_function(expect_badge, arg=0)
    assert page.locator("li.notification.unread").count() == 0
    assert page.locator("li.notification").count() == 2
    assert log.errors == []


def test_chat_over_the_websocket_can_be_cancelled(
    console_stack: ChatStack, open_page: OpenPage, token_for: Callable[..., str]
) -> None:
    """Asked over the WebSocket, the answer streams on the socket; Cancel stops it, and the
    answer ends `cancelled` with the partial text kept."""
    page, log = open_console(open_page, console_url(console_stack, token_for(uuid.uuid4())))
    page.evaluate(RECORD_RENDERINGS)
    page.evaluate(
        "() => { window.__chatFrames = 0; consoleClient.on('frame', (f) => {"
        " if (f.type === 'chat_event') window.__chatFrames += 1; }); }"
    )
    page.check("#over-ws")
    page.fill("#question", "please repeat " + " ".join(f"word{i}" for i in range(60)))
    page.click("#send")
    page.wait_for_function("() => window.__renderings.length >= 3", timeout=30_000)
    page.click("#cancel")
    page.wait_for_function("() => window.__finished.length > 0", timeout=30_000)
    finished = page.evaluate("window.__finished[0]")
    assert finished["status"] == "cancelled"
    assert finished["text"].startswith("[offline model]")
    assert "word59" not in finished["text"]
    assert page.evaluate("window.__chatFrames") >= 3, "the events came over the socket"
    assert log.errors == []
