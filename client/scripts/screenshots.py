"""Screenshots of the console for docs/images/, taken from a running `make run` stack.

    make run &                       # prints "console: http://127.0.0.1:8000/console#token=..."
    .venv/bin/python client/scripts/screenshots.py '<that console link>'

Drives Debian's chromium (Playwright). It asks the agent to create a few notifications (the
offline model's "notify me ..."), then captures the inbox, an answer while it streams, and the
page at phone width. Nothing here is needed to run or test the project.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parents[2] / "docs" / "images"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
ASKS = [
    "notify me that the nightly build is green",
    "notify me that Dana commented on the deploy checklist",
    "notify me that invoice 2026-118 was paid",
]
QUESTION = (
    "Summarise what happens when my phone drops off the network in the middle of an answer "
    "and comes back a minute later on another gateway behind the load balancer."
)


def ask(base: str, token: str, message: str) -> None:
    """One question over SSE, read to the end."""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.stream(
        "POST", f"{base}/api/v1/chat/stream", json={"message": message}, headers=headers, timeout=60
    ) as response:
        response.raise_for_status()
        for _ in response.iter_lines():
            pass


def main(link: str) -> None:
    base, _, token = link.partition("/console#token=")
    if not token:
        raise SystemExit("give the console link that `make run` printed (with #token=...)")
    for message in ASKS:
        ask(base, token, message)
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(link)
        page.wait_for_selector("#state[data-status=open]")
        page.wait_for_selector("li.notification")
        page.screenshot(path=str(OUT / "console-inbox.png"))
        page.select_option("#sessions", "")
        page.fill("#question", QUESTION)
        page.click("#send")
        page.wait_for_function(
            "() => { const t = document.querySelector('.message.assistant.streaming .text');"
            " return t && t.textContent.length > 120; }"
        )
        page.screenshot(path=str(OUT / "console-streaming.png"))
        page.wait_for_selector(".message.assistant[data-status]")
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(link)
        phone.wait_for_selector("#state[data-status=open]")
        phone.screenshot(path=str(OUT / "console-phone.png"))
        browser.close()
    print(f"wrote {OUT}/console-inbox.png, console-streaming.png, console-phone.png")


if __name__ == "__main__":
    main(sys.argv[1])
